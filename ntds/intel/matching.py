"""Matching indicators against flows, at flow end, a batch at a time; and the indicator set's file.

An `IntelSet` holds its indicators in a few flat numpy arrays, so a million of
them cost tens of megabytes instead of the hundreds a dict of Python objects
would, and a batch of flows is matched with one binary search per prefix length
present instead of one Python lookup per indicator:

- addresses and networks, IPv4 mapped into IPv6 (`::ffff:a.b.c.d`), as 16-byte
  keys sorted per prefix length (an address is a /128). A flow's two ends are
  masked to each prefix length present and searched (`np.searchsorted`);
  overlapping networks all stay findable, and the most specific wins;
- every other value (domains, fingerprints) as a 64-bit hash of its type and
  value, sorted; a hit is confirmed against the value itself, so a hash
  collision can only hide a match, never invent one. A server name is looked
  up with each of its parent domains (`a.b.evil.example` finds `evil.example`).

Expired indicators are dropped when the set is built and, for those that
expire later, at every match (`now`): they stop matching by themselves.

The set file (`write_set`, `read_set`) is what the aggregator signs and pushes:
a text file, one indicator a line (`type, value, source number, confidence,
added, expires`, tab separated) after a header line and a JSON line naming the
sources, so a sensor reads a million lines without holding them all at once.
"""

from __future__ import annotations

import io
import ipaddress
import json
import socket
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ntds.intel.indicators import TYPES, Indicator, normalise
from ntds.times import now_iso

SET_HEADER = "# ntds-intel 1"
TYPE_CODES = {t: i for i, t in enumerate(TYPES)}
FIELDS = ("src_ip", "dst_ip", "server_name", "client_fingerprint", "server_fingerprint")
"""What of a flow is matched: its two ends, nDPI's requested server name (DNS query, TLS SNI, HTTP Host), and
NFStream's client and server fingerprints."""
_V4_PREFIX = b"\x00" * 10 + b"\xff\xff"
_MASKS = np.array(
    [[0xFF if 8 * (i + 1) <= n else (0xFF << (8 - n % 8)) & 0xFF if 8 * i < n else 0 for i in range(16)]
     for n in range(129)],
    dtype=np.uint8,
)  # fmt: skip
"""_MASKS[n]: the 16-byte netmask of a /n."""
MAX_LABELS = 16
"""Parent domains looked up per server name (a longer name is looked up from its last 16 labels)."""


def ip_key(text: str) -> bytes | None:
    """An address as 16 bytes (IPv4 mapped into IPv6); None when it is not one."""
    try:
        if "." in text and ":" not in text:
            return _V4_PREFIX + socket.inet_pton(socket.AF_INET, text)
        return socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError, TypeError):
        return None


def _net_key(value: str) -> tuple[bytes, int]:
    net = ipaddress.ip_network(value, strict=False)
    if net.version == 4:
        return _V4_PREFIX + net.network_address.packed, 96 + net.prefixlen
    return net.network_address.packed, net.prefixlen


def _str_key(kind: str, value: str) -> int:
    return hash((kind, value))


@dataclass(frozen=True, slots=True)
class Match:
    """One indicator one flow matched, and which of the flow's fields it matched."""

    index: int
    field: str


class IntelSet:
    """Indicators ready to be matched; see the module docstring."""

    def __init__(self, indicators: Iterable[Indicator], now: float | None = None) -> None:
        import time

        now = time.time() if now is None else now
        sources: dict[str, int] = {}
        types, conf, src = array("B"), array("B"), array("I")
        added, expires = array("d"), array("d")
        blob, offsets = bytearray(), array("q", [0])
        ip_keys, ip_len, ip_idx = bytearray(), array("B"), array("i")
        str_keys, str_idx = array("q"), array("i")
        n = 0
        for ind in indicators:
            if not ind.active(now):
                continue
            if ind.type == "ip":
                key, plen = ip_key(ind.value), 128
                if key is None:
                    raise ValueError(f"not an IP address: {ind.value[:60]!r}")
            elif ind.type == "net":
                key, plen = _net_key(ind.value)
            if ind.type in ("ip", "net"):
                ip_keys += key
                ip_len.append(plen)
                ip_idx.append(n)
            else:
                str_keys.append(_str_key(ind.type, ind.value))
                str_idx.append(n)
            types.append(TYPE_CODES[ind.type])
            conf.append(max(0, min(100, int(ind.confidence))))
            src.append(sources.setdefault(ind.source, len(sources)))
            added.append(ind.added)
            expires.append(ind.expires)
            blob += ind.value.encode("utf-8")
            offsets.append(len(blob))
            n += 1
        self.n = n
        self.sources = list(sources)
        self.types = np.frombuffer(types, dtype=np.uint8) if n else np.zeros(0, np.uint8)
        self.confidence = np.frombuffer(conf, dtype=np.uint8) if n else np.zeros(0, np.uint8)
        self.source = np.frombuffer(src, dtype=np.uint32) if n else np.zeros(0, np.uint32)
        self.added = np.frombuffer(added, dtype=np.float64) if n else np.zeros(0)
        self.expires = np.frombuffer(expires, dtype=np.float64) if n else np.zeros(0)
        self.blob = bytes(blob)
        self.offsets = np.frombuffer(offsets, dtype=np.int64)
        self.nets: list[tuple[int, np.ndarray, np.ndarray]] = []
        """(prefix length, sorted keys, indicator index), most specific first."""
        if ip_idx:
            keys = np.frombuffer(bytes(ip_keys), dtype="S16")
            lens = np.frombuffer(ip_len, dtype=np.uint8)
            idx = np.frombuffer(ip_idx, dtype=np.int32)
            for plen in sorted(set(lens.tolist()), reverse=True):
                pick = lens == plen
                k, i = _unique_best(keys[pick], idx[pick], self.confidence)
                self.nets.append((plen, k, i))
        self.str_keys = np.zeros(0, np.int64)
        self.str_idx = np.zeros(0, np.int32)
        if str_idx:
            self.str_keys, self.str_idx = _unique_best(
                np.frombuffer(str_keys, dtype=np.int64), np.frombuffer(str_idx, dtype=np.int32), self.confidence
            )
        self.domains = bool(np.any(self.types == TYPE_CODES["domain"]))
        self.fingerprints = bool(np.any(self.types[self.str_idx] != TYPE_CODES["domain"]))

    def __len__(self) -> int:
        return self.n

    @property
    def nbytes(self) -> int:
        """Memory the set's arrays hold (what a million indicators cost the sensor, less the few sources)."""
        arrays = [self.types, self.confidence, self.source, self.added, self.expires, self.offsets, self.str_keys,
                  self.str_idx, *(a for _, k, i in self.nets for a in (k, i))]  # fmt: skip
        return len(self.blob) + sum(a.nbytes for a in arrays)

    def value(self, i: int) -> str:
        return self.blob[self.offsets[i] : self.offsets[i + 1]].decode("utf-8")

    def indicator(self, i: int) -> Indicator:
        return Indicator(TYPES_BY_CODE[int(self.types[i])], self.value(i), self.sources[int(self.source[i])],
                         int(self.confidence[i]), float(self.added[i]), float(self.expires[i]))  # fmt: skip

    def __iter__(self) -> Iterator[Indicator]:
        return (self.indicator(i) for i in range(self.n))

    def new_since(self, old: IntelSet | None) -> IntelSet:
        """The indicators of this set that `old` does not have (by type and value): what a sensor has not been
        matching yet, so what its retro-hunt looks for. Both sets must be built in this process (the hashes)."""
        if old is None or not len(old):
            return self
        keep = np.zeros(self.n, dtype=bool)
        before = {plen: keys for plen, keys, _ in old.nets}
        for plen, keys, idx in self.nets:
            known = before.get(plen)
            keep[idx if known is None else idx[~np.isin(keys, known)]] = True
        keep[self.str_idx[~np.isin(self.str_keys, old.str_keys)]] = True
        return IntelSet((self.indicator(int(i)) for i in np.flatnonzero(keep)), now=0)

    # -- matching ---------------------------------------------------------------------------

    def match(self, flows: Sequence[tuple[str, str, str, str, str]], now: float) -> list[list[Match]]:
        """Per flow (src_ip, dst_ip, server_name, client_fingerprint, server_fingerprint): the indicators it matches,
        at most one per field (the most specific: the longest prefix, the longest domain)."""
        out: list[list[Match]] = [[] for _ in flows]
        if not self.n or not flows:
            return out
        best: dict[tuple[int, str], int] = {}
        expires = self.expires

        def alive(k: int) -> bool:  # an expired indicator leaves the field to a broader one that is not
            return not expires[k] or expires[k] > now

        if self.nets:
            keys = [ip_key(f[0]) or bytes(16) for f in flows] + [ip_key(f[1]) or bytes(16) for f in flows]
            q = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, 16)
            m = len(flows)
            for plen, sorted_keys, idx in self.nets:
                masked = np.ascontiguousarray(q & _MASKS[plen]).view("S16").ravel()
                pos = np.searchsorted(sorted_keys, masked)
                np.minimum(pos, len(sorted_keys) - 1, out=pos)
                for j in np.flatnonzero(sorted_keys[pos] == masked):
                    j = int(j)
                    where = (j % m, FIELDS[j // m])
                    k = int(idx[pos[j]])
                    if where not in best and keys[j] != bytes(16) and alive(k):
                        best[where] = k
        if len(self.str_keys):
            cand: list[tuple[int, str, str, str]] = []
            for i, f in enumerate(flows):
                name = f[2]
                if name and self.domains:
                    labels = name.lower().rstrip(".").split(".")[-MAX_LABELS:]
                    cand.extend((i, "server_name", "domain", ".".join(labels[k:])) for k in range(len(labels)))
                if self.fingerprints:
                    for field, fp, kinds in ((3, "client_fingerprint", ("ja4", "ja3", "hassh")),
                                             (4, "server_fingerprint", ("ja3s", "hassh_server"))):  # fmt: skip
                        v = f[field]
                        if v:
                            v = v.lower()
                            cand.extend((i, fp, k, v) for k in kinds)
            if cand:
                q = np.fromiter((_str_key(k, v) for _, _, k, v in cand), dtype=np.int64, count=len(cand))
                pos = np.searchsorted(self.str_keys, q)
                np.minimum(pos, len(self.str_keys) - 1, out=pos)
                for j in np.flatnonzero(self.str_keys[pos] == q):
                    i, field, kind, value = cand[int(j)]
                    k = int(self.str_idx[pos[j]])
                    if ((i, field) not in best and TYPES_BY_CODE[int(self.types[k])] == kind and self.value(k) == value
                            and alive(k)):  # fmt: skip
                        best[(i, field)] = k
        for (i, field), k in best.items():
            out[i].append(Match(k, field))
        for hits in out:
            hits.sort(key=lambda h: FIELDS.index(h.field))
        return out


TYPES_BY_CODE = dict(enumerate(TYPES))


def _unique_best(keys: np.ndarray, idx: np.ndarray, confidence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique keys, each with the indicator of the highest confidence among those sharing it."""
    order = np.lexsort((-confidence[idx].astype(np.int16), keys))
    keys, idx = keys[order], idx[order]
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    return keys[first], idx[first]


# -- the set file ------------------------------------------------------------------------------


def write_set(indicators: Iterable[Indicator], created: str | None = None) -> bytes:
    """The set file the aggregator signs and pushes (see the module docstring)."""
    sources: dict[str, int] = {}
    rows = []
    for ind in indicators:
        s = sources.setdefault(ind.source, len(sources))
        rows.append(f"{ind.type}\t{ind.value}\t{s}\t{ind.confidence}\t{int(ind.added)}\t{int(ind.expires)}\n")
    head = json.dumps({"created": created or now_iso(), "sources": list(sources)}, separators=(",", ":"))
    return (f"{SET_HEADER}\n{head}\n" + "".join(rows)).encode("utf-8")


def _lines(data: str | bytes) -> Iterator[str]:
    """Lines one at a time, from bytes (a StringIO of the text would hold it four bytes a character: 140 MB more
    for a million indicators)."""
    for raw in io.BytesIO(data.encode("utf-8") if isinstance(data, str) else data):
        yield raw.rstrip(b"\r\n").decode("utf-8")


def read_set(text: str | bytes, check: bool = True) -> Iterator[Indicator]:
    """The indicators of a set file, one at a time (a million are never all Python objects at once); ValueError
    (one line) naming the first line that is not one, raised as it is reached. `check` normalises every value
    again (a pushed set is checked before it is trusted)."""
    lines = _lines(text)
    if next(lines, "") != SET_HEADER:
        raise ValueError(f"not an ntds indicator set (the first line is not {SET_HEADER!r})")
    try:
        head = json.loads(next(lines, ""))
        sources = [str(s) for s in head["sources"]]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ValueError("the indicator set's second line is not its JSON header") from None
    for n, line in enumerate(lines, 3):
        parts = line.split("\t")
        try:
            kind, value, s, c, a, e = parts
            if kind not in TYPES:
                raise ValueError(f"unknown type {kind[:40]!r}")
            if check and normalise(kind, value) != (kind, value):
                raise ValueError(f"{value[:60]!r} is not in its normal form")
            c_, a_, e_ = int(c), float(a), float(e)
            if not 0 <= c_ <= 100:
                raise ValueError("confidence outside 0-100")
            ind = Indicator(kind, value, sources[int(s)], c_, a_, e_)
        except (ValueError, IndexError) as err:
            raise ValueError(f"line {n} of the indicator set is not an indicator: {err}") from None
        yield ind


__all__ = ["FIELDS", "IntelSet", "Match", "ip_key", "read_set", "write_set"]
