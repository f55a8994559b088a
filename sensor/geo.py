"""Offline IP -> country, for the summaries' traffic-by-country table.

Default: the database built into the `iptocc` wheel (the five Regional
Internet Registries' delegation files, refreshed with each release; the
pinned 3.3.170 was built in October 2026). It names the country a block is
registered to, which agrees with commercial geolocation for about 95% of IPv4
addresses. Sites with their own database point `geoip_database` at a CSV of
address ranges, one `first,last,CC` per line (the layout of DB-IP's free
"IP to Country Lite" CSV, CC BY 4.0), IPv4 and IPv6 mixed. Nothing is looked
up over the network, ever.
"""

from __future__ import annotations

import bisect
import ipaddress
from pathlib import Path

UNKNOWN = "ZZ"
"""ISO 3166 user-assigned code used for addresses no database places."""
_CACHE_LIMIT = 100_000


class GeoIP:
    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else None
        self._cache: dict[str, str] = {}
        if self.path is None:
            import iptocc

            self._lookup = iptocc.country_code
            self.source = f"iptocc {_version('iptocc')} (RIR delegation data)"
        else:
            self._ranges = _load_ranges(self.path)
            self._lookup = self._from_ranges
            self.source = str(self.path)

    def country(self, ip: str) -> str:
        cc = self._cache.get(ip)
        if cc is None:
            try:
                cc = self._lookup(ip) or UNKNOWN
            except ValueError:
                cc = UNKNOWN
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[ip] = cc
        return cc

    def _from_ranges(self, ip: str) -> str | None:
        a = ipaddress.ip_address(ip)
        starts, ends, codes = self._ranges[a.version]
        i = bisect.bisect_right(starts, int(a)) - 1
        return codes[i] if i >= 0 and int(a) <= ends[i] else None


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def _load_ranges(path: Path) -> dict[int, tuple[list[int], list[int], list[str]]]:
    """Sorted, non-overlapping ranges per IP version; a bad line is an error naming it."""
    if not path.is_file():
        raise ValueError(f"{path}: no such GeoIP database")
    rows: dict[int, list[tuple[int, int, str]]] = {4: [], 6: []}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = [p.strip().strip('"') for p in line.split(",")]
            try:
                first, last = ipaddress.ip_address(parts[0]), ipaddress.ip_address(parts[1])
                cc = parts[2].upper()
                if first.version != last.version or int(last) < int(first) or len(cc) != 2 or not cc.isalpha():
                    raise ValueError
            except (ValueError, IndexError):
                raise ValueError(f"{path}:{n}: expected 'first,last,CC', got {line[:60]!r}") from None
            rows[first.version].append((int(first), int(last), cc))
    out = {}
    for version, items in rows.items():
        items.sort()
        for (_, prev_last, _), (first, _, _) in zip(items, items[1:]):
            if first <= prev_last:
                raise ValueError(f"{path}: overlapping IPv{version} ranges at {ipaddress.ip_address(first)}")
        out[version] = ([a for a, _, _ in items], [b for _, b, _ in items], [c for _, _, c in items])
    if not any(out[v][0] for v in out):
        raise ValueError(f"{path}: no address ranges")
    return out
