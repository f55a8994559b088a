"""Receivers: how one notification (a group of alerts with its idempotency key) reaches a destination.

Each sender raises on any failure (the outbox retries with backoff) and
returns only once the destination has the notification. Network senders work
under a `Deadline`: `timeout_s` bounds the whole delivery (connecting,
sending, the answer), not each read, so a receiver that trickles one byte at
a time is cut off at the deadline like one that never answers.

- webhook: HTTP POST of the JSON notification (or, with `format`, a JSON
  array of the alerts as EVE, ECS or OCSF records); the body is signed with
  HMAC-SHA256 under the receiver's secret (`X-Ntds-Signature: sha256=HEX`),
  the key travels as `Idempotency-Key`; any 2xx is success. A redirect is a
  failed attempt unless the receiver allows `max_redirects`; then the same
  signed POST goes to the new address (never a body-less GET).
- syslog: one RFC 5424 message per alert, over UDP (one datagram each) or TCP
  (octet-counted framing, RFC 6587), HOSTNAME the host's FQDN where it has
  one; the alert's fields as structured data, the signature as the message
  (or, with `format`, the alert's EVE, ECS or OCSF record as the message, the
  key as structured data); severity from the tier. Over TCP the delivery
  counts only once the listener has read everything and closed its end
  within the deadline (a listener that never reads is a failed attempt).
- email: one message per notification over SMTP, upgraded with STARTTLS when
  the server offers it (or required, or never, as configured); the
  Message-ID is derived from the idempotency key.
- eve (or file): one JSON object per alert appended to a file, in the
  receiver's `format` (`formats`): Suricata EVE by default (Filebeat, Vector
  and Logstash read it as such), ECS or OCSF; each with the delivery key;
  fsynced, rotated by size. A delivery whose key is
  already in the file (a crash between writing and recording) is not written
  twice.

Every string that came from a sensor is untrusted: it is escaped for the
format it goes into (JSON, syslog structured data, e-mail headers and text).
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import hmac
import http.client
import json
import os
import smtplib
import socket
import ssl
import threading
import time
import urllib.parse
from collections import deque
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

from aggregator.broadcast.formats import delivery_key, record
from aggregator.broadcast.routes import ReceiverConfig
from ntds.logs import printable

SEVERITY = {5: 2, 4: 3, 3: 4}
"""Alert tier -> syslog severity (critical, error, warning; lower tiers notice)."""
ENTERPRISE = 32473
"""Private enterprise number of RFC 5612's documentation range, for the structured-data id."""


class DeadlineExceeded(TimeoutError):
    """A delivery that did not finish within its receiver's `timeout_s`."""


class _Reaper:
    """One thread for every deadline of the process: it wakes at the earliest one still open and ends it (no
    thread started per delivery)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Deadline]] = []
        self._count = 0
        self._thread: threading.Thread | None = None

    def add(self, deadline: Deadline) -> None:
        with self._cond:
            self._count += 1
            heapq.heappush(self._heap, (deadline.end, self._count, deadline))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="broadcast-deadlines", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                left = self._heap[0][0] - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                heapq.heappop(self._heap)[2].expire()


_REAPER = _Reaper()


class Deadline:
    """The total time one delivery may take. Sockets registered with `watch` are shut down when it passes, so a
    read or write blocked on a peer that trickles or never answers returns at once, whatever the socket's own
    timeout; `remaining()` gives the socket timeout for the next step (and raises once the time is up)."""

    def __init__(self, seconds: float, what: str = "the receiver") -> None:
        self.seconds, self.what = seconds, what
        self.end = time.monotonic() + seconds
        self.expired = False
        self.done = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def __enter__(self) -> Deadline:
        _REAPER.add(self)
        return self

    def __exit__(self, kind, error, tb) -> None:
        with self._lock:
            self.done = True
        if error is None or isinstance(error, DeadlineExceeded):
            return
        if self.expired or isinstance(error, TimeoutError):  # socket timeouts are set to what is left of it
            raise self.exceeded() from None  # whatever the shut-down socket raised: the deadline is the cause

    def exceeded(self) -> DeadlineExceeded:
        return DeadlineExceeded(f"{self.what} did not finish within the {self.seconds:g} s deadline")

    def remaining(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0 or self.expired:
            raise self.exceeded()
        return left

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if not self.expired:
                return
        self._shut(sock)
        raise self.exceeded()

    def check(self) -> None:
        """Raise if the deadline passed (a read that returned because its socket was shut down looks like EOF)."""
        if self.expired:
            raise self.exceeded()

    def expire(self) -> None:
        with self._lock:
            if self.done:
                return
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class Sender:
    def __init__(self, cfg: ReceiverConfig) -> None:
        self.cfg = cfg
        self.o = cfg.options

    def send(self, note: dict) -> None:
        raise NotImplementedError


def body_of(note: dict, fmt: str = "ntds") -> bytes:
    """The webhook's body: the notification itself, or a JSON array of its alerts in a SIEM's format."""
    data = note if fmt == "ntds" else [record(fmt, a, note["idempotency_key"]) for a in note["alerts"]]
    return json.dumps(data, separators=(",", ":"), sort_keys=True, ensure_ascii=True).encode()


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class Webhook(Sender):
    ANSWER = 65536
    """Bytes of the answer's body read (and ignored): a receiver that streams an endless body is not read on."""

    def __init__(self, cfg: ReceiverConfig) -> None:
        super().__init__(cfg)
        self.secret = Path(self.o["secret_file"]).read_bytes().strip()
        self.context = ssl.create_default_context()

    def send(self, note: dict) -> None:
        body = body_of(note, self.o["format"])
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "ntds-aggregator",
            "Idempotency-Key": note["idempotency_key"],
            "X-Ntds-Signature": signature(self.secret, body),
        }
        url, hops = self.o["url"], 0
        with Deadline(self.o["timeout_s"], "the webhook") as deadline:
            while True:
                status, location = self._post(url, body, headers, deadline)
                if 200 <= status < 300:
                    return
                if not (300 <= status < 400 and location):
                    raise OSError(f"HTTP {status}")
                target = urllib.parse.urljoin(url, location)
                if hops >= self.o["max_redirects"]:
                    raise OSError(f"HTTP {status}: redirect to {printable(target, 200)} refused (the receiver "
                                  f"allows {self.o['max_redirects']}: max_redirects)")  # fmt: skip
                if not target.startswith(("http://", "https://")):
                    raise OSError(f"HTTP {status}: redirect to {printable(target, 200)} refused (not http or https)")
                url, hops = target, hops + 1

    def _post(self, url: str, body: bytes, headers: dict, deadline: Deadline) -> tuple[int, str]:
        """One POST; (status, Location header)."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=deadline.remaining(), context=self.context
            )
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=deadline.remaining())
        try:
            conn.connect()
            deadline.watch(conn.sock)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("POST", path, body=body, headers=headers)
            conn.sock.settimeout(deadline.remaining())
            response = conn.getresponse()
            response.read(self.ANSWER)
            deadline.check()
            return response.status, response.getheader("Location", "") or ""
        finally:
            conn.close()


def _sd_value(value) -> str:
    """An RFC 5424 PARAM-VALUE: UTF-8 with `"`, `\\` and `]` escaped; control characters made visible."""
    text = printable(str(value), 1000)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def syslog_message(alert: dict, key: str, facility: int, hostname: str, fmt: str = "ntds") -> bytes:
    """One RFC 5424 message for one alert: its fields as structured data and the signature as MSG, or (`fmt`
    eve, ecs, ocsf) the key as structured data and the alert's record as MSG (JSON, ASCII: one line)."""
    severity = SEVERITY.get(alert.get("tier", 0), 5)
    stamp = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    msgid = "".join(c for c in str(alert.get("kind", "alert")) if 33 <= ord(c) <= 126)[:32] or "-"
    params = {"key": key, "sensor": alert.get("sensor", ""), "kind": alert.get("kind", ""),
              "tier": alert.get("tier", 0), "count": alert.get("count", 1), "src_ip": alert.get("src_ip", ""),
              "dst_ip": alert.get("dst_ip", ""), "dst_port": alert.get("dst_port", 0),
              "application": alert.get("application", ""), "first_seen": alert.get("first_seen", ""),
              "community_id": alert.get("community_id", "")}  # fmt: skip
    if fmt != "ntds":
        params = {"key": key, "format": fmt}
    sd = f"[ntds@{ENTERPRISE} " + " ".join(f'{k}="{_sd_value(v)}"' for k, v in params.items()) + "]"
    host = "".join(c for c in hostname if 33 <= ord(c) <= 126)[:255] or "-"
    header = f"<{facility * 8 + severity}>1 {stamp} {host} ntds {os.getpid()} {msgid} {sd} "
    if fmt != "ntds":
        text = json.dumps(record(fmt, alert, key), separators=(",", ":"), ensure_ascii=True)
    else:
        text = printable(str(alert.get("signature", "")), 2000)
    return header.encode() + b"\xef\xbb\xbf" + text.encode()


def fqdn() -> str:
    """RFC 5424's HOSTNAME: the host's fully qualified domain name where it has one, else its name."""
    name = socket.gethostname()
    full = socket.getfqdn(name)
    return full if "." in full and not full.startswith("localhost") else name


class Syslog(Sender):
    def __init__(self, cfg: ReceiverConfig) -> None:
        super().__init__(cfg)
        self.hostname = fqdn()

    def send(self, note: dict) -> None:
        key, fmt = note["idempotency_key"], self.o["format"]
        messages = [syslog_message(a, key, self.o["facility"], self.hostname, fmt) for a in note["alerts"]]
        address = (self.o["host"], self.o["port"])
        if self.o["protocol"] == "udp":
            with socket.socket(socket.AF_INET6 if ":" in self.o["host"] else socket.AF_INET, socket.SOCK_DGRAM) as s:
                for m in messages:
                    s.sendto(m, address)
            return
        what = f"the syslog listener {self.o['host']}:{self.o['port']}"
        with Deadline(self.o["timeout_s"], what) as deadline:
            self._tcp(address, messages, what, deadline)

    @staticmethod
    def _tcp(address: tuple, messages: list[bytes], what: str, deadline: Deadline) -> None:
        with socket.create_connection(address, timeout=deadline.remaining()) as s:
            deadline.watch(s)
            s.sendall(b"".join(str(len(m)).encode() + b" " + m for m in messages))
            s.shutdown(socket.SHUT_WR)
            # Written is not read: the delivery counts once the listener has read to our end and closed its own
            # (EOF); one that never reads keeps the messages in socket buffers and fails at the deadline.
            while True:
                s.settimeout(deadline.remaining())
                try:
                    chunk = s.recv(4096)
                except ConnectionResetError:
                    deadline.check()
                    raise OSError(f"{what} reset the connection before reading every message") from None
                if not chunk:
                    break
            deadline.check()


def _header(text: str) -> str:
    """A header value from untrusted text: one line, printable."""
    return printable(text.replace("\r", " ").replace("\n", " "), 200)


def email_message(note: dict, sender: str, to: list[str]) -> EmailMessage:
    alerts = note["alerts"]
    top = max(alerts, key=lambda a: (a.get("tier", 0), a.get("count", 1)))
    more = f" (+{len(alerts) - 1} more)" if len(alerts) > 1 else ""
    m = EmailMessage()
    m["From"], m["To"] = sender, ", ".join(to)
    m["Subject"] = _header(f"[ntds] tier {top.get('tier')} {top.get('kind')} {top.get('src_ip')}{more}")
    domain = sender.rpartition("@")[2] or "ntds.invalid"
    m["Message-ID"] = f"<{hashlib.sha256(note['idempotency_key'].encode()).hexdigest()[:32]}@{domain}>"
    lines = [f"{len(alerts)} alert(s) for route {note['route']} ({'reminder' if note['repeat'] else 'new'}):", ""]
    for a in alerts:
        lines += [
            f"tier {a.get('tier')} {a.get('kind')} x{a.get('count', 1)}  {a.get('first_seen')} .. {a.get('last_seen')}",
            f"  sensor {a.get('sensor')}  {a.get('src_ip')} -> {a.get('dst_ip')}:{a.get('dst_port')}  "
            f"{a.get('application')}",
            f"  {a.get('signature')}",
            *(f"  - {e.get('text', '')}" for e in a.get("explanation", [])),
            "",
        ]
    lines.append(f"delivery {note['idempotency_key']}")
    m.set_content("\n".join(printable(line, 2000) for line in lines))
    return m


class Email(Sender):
    def send(self, note: dict) -> None:
        o = self.o
        message = email_message(note, o["from"], o["to"])
        with Deadline(o["timeout_s"], f"the mail server {o['smtp_host']}") as deadline:
            self._send(message, deadline)

    def _send(self, message: EmailMessage, deadline: Deadline) -> None:
        o = self.o
        with smtplib.SMTP(o["smtp_host"], o["smtp_port"], timeout=deadline.remaining()) as smtp:
            deadline.watch(smtp.sock)
            smtp.ehlo()
            if o["starttls"] != "never" and smtp.has_extn("starttls"):
                context = ssl.create_default_context(cafile=o["ca_file"] or None)
                smtp.starttls(context=context)
                deadline.watch(smtp.sock)
                smtp.ehlo()
            elif o["starttls"] == "require":
                raise OSError(f"{o['smtp_host']} does not offer STARTTLS, which this receiver requires")
            if o["username"]:
                smtp.login(o["username"], Path(o["password_file"]).read_text().strip())
            smtp.send_message(message)
        deadline.check()


class Eve(Sender):
    TAIL = 4 * 2**20
    """Bytes of the current file read back at start to know which deliveries it already holds."""

    def __init__(self, cfg: ReceiverConfig) -> None:
        super().__init__(cfg)
        self.path = Path(self.o["path"])
        self.seen: deque[str] = deque(maxlen=20_000)
        self._loaded = False

    def _load(self) -> None:
        self._loaded = True
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            fh.seek(max(0, self.path.stat().st_size - self.TAIL))
            for line in fh.read().splitlines():
                try:
                    key = delivery_key(json.loads(line))
                except ValueError:
                    continue
                if key:
                    self.seen.append(key)

    def send(self, note: dict) -> None:
        if not self._loaded:
            self._load()
        key = note["idempotency_key"]
        if key in self.seen:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size >= self.o["rotate_mb"] * 2**20:
            self._rotate()
        fmt = self.o["format"]
        data = b"".join(json.dumps(record(fmt, a, key), separators=(",", ":")).encode() + b"\n" for a in note["alerts"])
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.seen.append(key)

    def _rotate(self) -> None:
        keep = self.o["keep"]
        for k in range(keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{k}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{k + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))


SENDERS: dict[str, type[Sender]] = {"webhook": Webhook, "syslog": Syslog, "email": Email, "eve": Eve, "file": Eve}


class RateLimit:
    """At most `per_minute` deliveries in any minute: a flood waits, it is never dropped."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.sent: deque[float] = deque()

    def ready(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        while self.sent and now - self.sent[0] >= 60:
            self.sent.popleft()
        return len(self.sent) < self.per_minute

    def take(self, now: float | None = None) -> None:
        self.sent.append(time.monotonic() if now is None else now)
