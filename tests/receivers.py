"""Real receivers on 127.0.0.1 for the broadcast tests: an HTTP server that checks the HMAC, syslog listeners
(UDP and TCP) that parse RFC 5424, an SMTP server (aiosmtpd, optionally with STARTTLS); and misbehaving ones: a
webhook that trickles its answer a byte at a time, one that redirects, a TCP listener that never reads."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from syslog_rfc5424_parser import SyslogMessage


class WebhookServer:
    """Accepts POSTs whose X-Ntds-Signature is the HMAC-SHA256 of the body under `secret`; refuses others (401).
    A body that is a JSON array (EVE, ECS or OCSF records) is kept as {"idempotency_key", "records"}."""

    def __init__(self, secret: bytes, port: int = 0, delay_s: float = 0.0) -> None:
        self.secret, self.delay_s = secret, delay_s
        self.received: list[dict] = []
        self.gets: list[str] = []
        self.bad_signatures = 0
        self.lock = threading.Lock()
        self.port = port
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> WebhookServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                want = "sha256=" + hmac.new(owner.secret, body, hashlib.sha256).hexdigest()
                if not hmac.compare_digest(want, self.headers.get("X-Ntds-Signature", "")):
                    with owner.lock:
                        owner.bad_signatures += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                time.sleep(owner.delay_s)
                note = json.loads(body)
                if isinstance(note, list):  # a SIEM format: a JSON array of records, the key in the header
                    note = {"idempotency_key": self.headers["Idempotency-Key"], "records": note}
                assert note["idempotency_key"] == self.headers["Idempotency-Key"]
                with owner.lock:
                    owner.received.append(note)
                self.send_response(204)
                self.end_headers()

            def do_GET(self):  # noqa: N802 - a GET carries no alerts; answered 200 as any web server would
                with owner.lock:
                    owner.gets.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def alert_ids(self) -> dict[str, set[int]]:
        """Idempotency key -> the alert ids its notifications carried (the same every time it came)."""
        out: dict[str, set[int]] = {}
        with self.lock:
            for note in self.received:
                ids = {a["id"] for a in note["alerts"]}
                assert out.setdefault(note["idempotency_key"], ids) == ids, "one key, two different notifications"
        return out


def parse_rfc5424(data: bytes) -> dict:
    """A syslog message's parts, read by an independent RFC 5424 parser (syslog-rfc5424-parser, a Lark
    grammar of the RFC's ABNF); the structured data's parameters unescaped. ParseError if malformed."""
    m = SyslogMessage.parse(data.decode("utf-8"))
    assert m.version == 1
    ((sd_id, params),) = m.sd.items()
    msg = m.msg or ""
    assert msg.startswith("\ufeff"), "MSG is UTF-8 with a BOM"
    return {"pri": int(m.facility) * 8 + int(m.severity), "hostname": m.hostname, "appname": m.appname,
            "timestamp": m.timestamp, "msgid": m.msgid, "sd_id": sd_id,
            "params": {k: re.sub(r"\\(.)", r"\1", v) for k, v in params.items()}, "msg": msg[1:]}  # fmt: skip


class SyslogListener:
    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.messages: list[dict] = []
        kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        if protocol == "tcp":
            self.sock.listen(16)
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.protocol == "udp":
                    data, _ = self.sock.recvfrom(65535)
                    self.messages.append(parse_rfc5424(data))
                    continue
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(5)
                buf = b""
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
            while buf:  # octet counting: LEN SP MSG
                length, _, rest = buf.partition(b" ")
                n = int(length)
                self.messages.append(parse_rfc5424(rest[:n]))
                buf = rest[n:]

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()


class RawHttp:
    """A TCP server on 127.0.0.1 answering each connection with `answer(conn)` after reading the request head;
    records each connection's (opened, closed) monotonic times and request heads."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.connections: list[list[float]] = []
        self.requests: list[bytes] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        times = [time.monotonic(), 0.0]
        self.connections.append(times)
        with conn:
            conn.settimeout(120)
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    head += chunk
                self.requests.append(head.split(b"\r\n\r\n")[0])
                self.answer(conn, self._stop)
            except OSError:
                pass
        times[1] = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()


def trickling(interval_s: float):
    """An answer that sends its status line one byte every interval_s, forever (until the peer goes)."""

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" * 1000:
            if stop.wait(interval_s):
                return
            conn.sendall(bytes([byte]))

    return answer


def redirecting(location: str, status: int = 302):
    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(f"HTTP/1.1 {status} Found\r\nLocation: {location}\r\nContent-Length: 0\r\n"
                     f"Connection: close\r\n\r\n".encode())  # fmt: skip

    return answer


class DeafListener:
    """A TCP listener that accepts connections and never reads from them (a hung syslog server)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)  # kept open, never read

    def stop(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 (openssl), for the STARTTLS test."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)  # fmt: skip
    return cert, key


class SmtpServer:
    """aiosmtpd on loopback; with `tls` it offers STARTTLS (and requires it) and records whether it was used."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        from aiosmtpd.controller import Controller

        owner = self
        self.messages: list[dict] = []

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
                owner.messages.append({"from": envelope.mail_from, "to": envelope.rcpt_tos,
                                       "data": envelope.content, "tls": session.ssl is not None})  # fmt: skip
                return "250 OK"

        kwargs = {}
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            kwargs = {"tls_context": context, "require_starttls": True}
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()
