"""An independent count of what prevalence claims, read packet by packet with dpkt.

It shares nothing with the product but the definition: a local host (inside
the local networks) reaches an external address when a packet passes between
them (either direction: the local end is the one counted, as the traffic
classes do); first seen is the earliest such packet, last seen the latest. A
local client reaches a registered domain when it asks a DNS question for a name
under it (UDP port 53, any server), or names a server under it in a TLS
ClientHello (SNI) sent to an external server. Sets are exact: prevalence's
sketches must agree within their documented error.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import dpkt
from publicsuffixlist import PublicSuffixList

_PSL = PublicSuffixList()


@dataclass
class Seen:
    hosts: set[str] = field(default_factory=set)
    first_ms: int = 2**62
    last_ms: int = 0

    def add(self, host: str, ms: int) -> None:
        self.hosts.add(host)
        self.first_ms = min(self.first_ms, ms)
        self.last_ms = max(self.last_ms, ms)


def _ip(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def _packets(path: Path):
    with path.open("rb") as f:
        try:
            reader = dpkt.pcap.Reader(f)
        except ValueError:
            f.seek(0)
            reader = dpkt.pcapng.Reader(f)
        link = reader.datalink()
        for ts, buf in reader:
            if link == dpkt.pcap.DLT_EN10MB:
                eth = dpkt.ethernet.Ethernet(buf)
                ip = eth.data
            elif link == dpkt.pcap.DLT_LINUX_SLL:
                ip = dpkt.sll.SLL(buf).data
            elif link in (dpkt.pcap.DLT_RAW, 101, 228, 229):
                ip = dpkt.ip.IP(buf) if buf and buf[0] >> 4 == 4 else dpkt.ip6.IP6(buf)
            else:
                raise ValueError(f"link type {link}")
            if isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6):
                yield int(ts * 1000), ip


def _local(nets, addr: str) -> bool:
    a = ipaddress.ip_address(addr)
    return any(a in n for n in nets if n.version == a.version)


def _group(addr: str) -> bool:
    a = ipaddress.ip_address(addr)
    return a.is_multicast or a.is_unspecified or addr == "255.255.255.255"


def _sni(payload: bytes) -> str:
    """The server name of a TLS ClientHello at the start of `payload`, or ""."""
    try:
        records, _ = dpkt.ssl.tls_multi_factory(payload)
        for r in records:
            if r.type != 22:
                continue
            hs = dpkt.ssl.TLSHandshake(r.data)
            if not isinstance(hs.data, dpkt.ssl.TLSClientHello):
                continue
            for kind, data in hs.data.extensions:
                if kind == 0 and len(data) > 5:
                    (n,) = struct.unpack("!H", data[3:5])
                    return data[5 : 5 + n].decode("ascii", "replace").lower()
    except (dpkt.UnpackError, dpkt.NeedData, dpkt.ssl.SSL3Exception, ValueError, IndexError, struct.error,
            AttributeError):  # fmt: skip
        return ""
    return ""


HTTP_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"CONNECT ", b"PATCH ")


def _http_host(payload: bytes) -> str:
    """The Host header of an HTTP request at the start of `payload`, without its port, or ""."""
    if not payload.startswith(HTTP_METHODS):
        return ""
    for line in payload.split(b"\r\n")[1:]:
        if not line:
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"host":
            host = value.strip().decode("ascii", "replace").lower()
            return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return ""


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return False


def registered(name: str) -> str:
    name = name.strip(".").lower()
    if not name or name.endswith((".arpa", ".local", ".localdomain", ".lan", ".home", ".internal")):
        return ""
    return _PSL.privatesuffix(name) or ""


def exact(paths: list[Path], local_networks: list[str]) -> dict[tuple[str, str], Seen]:
    """(kind, destination) -> the local hosts that reached it, first and last seen (ms), over every packet."""
    nets = [ipaddress.ip_network(n) for n in local_networks]
    out: dict[tuple[str, str], Seen] = defaultdict(Seen)
    for path in paths:
        for ms, ip in _packets(path):
            src, dst = _ip(ip.src), _ip(ip.dst)
            if _group(src) or _group(dst):
                continue
            ls, ld = _local(nets, src), _local(nets, dst)
            if ls != ld:
                local, remote = (src, dst) if ls else (dst, src)
                out[("address", remote)].add(local, ms)
            l4 = ip.data
            if isinstance(l4, dpkt.udp.UDP) and l4.dport == 53 and ls:
                try:
                    q = dpkt.dns.DNS(l4.data)
                except (dpkt.UnpackError, dpkt.NeedData, IndexError, struct.error):
                    continue
                if q.qr == dpkt.dns.DNS_Q and q.qd:
                    d = registered(q.qd[0].name)
                    if d:
                        out[("domain", d)].add(src, ms)
            elif isinstance(l4, dpkt.tcp.TCP) and ls and not ld and l4.data:
                data = bytes(l4.data)
                name = _sni(data) if data[:1] == b"\x16" else _http_host(data)
                d = registered(name) if name and not _is_address(name) else ""
                if d:
                    out[("domain", d)].add(src, ms)
    return dict(out)
