"""Prevalence sketches: how many distinct local hosts reached a destination, mergeable and bounded.

Sensors and the aggregator share this module. A sensor keeps, per interval and
per external destination (its address, the registered domain and the TLS
server name a local client asked for, the client fingerprint it used), a
HyperLogLog sketch of the local hosts involved, and sends it as its own compact
bytes (Apache DataSketches' serialisation, base64 on the wire; no pickle
anywhere). The aggregator merges sketches per site and across the fleet: a
union of HyperLogLog sketches counts each host once however many sensors,
hours or sites saw it.

Why sketches and not sets: a sketch's size is bounded whatever the traffic (at
most SKETCH_MAX_BYTES per destination), and two sketches merge without
knowing which hosts they hold. Why this library: see README, Dependencies.

Error, as documented by DataSketches for HLL_4 at lg_k = 10: below about 100
hosts the sketch holds the hosts' 32-bit coupons themselves (list and set
modes), so counts are exact unless two hosts' coupons collide (about 1 in
10^6 for 100 hosts); above, the estimate's relative standard error is
1.04 / sqrt(1024) = 3.3% (RELATIVE_ERROR), so 95% of estimates fall within
6.5% of the truth.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
from collections.abc import Iterable

import datasketches as ds

LG_K = 10
"""log2 of the sketch's registers: 1,024 registers of 4 bits (HLL_4)."""
SKETCH_MAX_BYTES = ds.hll_sketch.get_max_updatable_serialization_bytes(LG_K, ds.tgt_hll_type.HLL_4)
"""The largest sketch at LG_K, 616 bytes (a dense HLL_4 sketch is about 552; in list mode 8 + 4 per host)."""
RELATIVE_ERROR = 1.04 / math.sqrt(2**LG_K)
"""Relative standard error of an estimate beyond the exact (coupon) range, 1 standard deviation."""
EXACT_BELOW = 100
"""Below this many hosts a sketch is exact but for coupon collisions (list and set modes)."""

KINDS = ("address", "domain", "server_name", "client_fingerprint")
"""What a destination is: an external address; the registered domain of a name a local client asked for (DNS
question, TLS SNI, HTTP Host); the TLS/QUIC server name itself; the client's fingerprint (JA4, HASSH)."""
KIND_WORDS = {
    "address": "address",
    "domain": "domain",
    "server_name": "server name",
    "client_fingerprint": "client fingerprint",
}


class SketchError(ValueError):
    """Bytes that are not a sketch of this module's kind."""


def new_sketch() -> ds.hll_sketch:
    return ds.hll_sketch(LG_K, ds.tgt_hll_type.HLL_4)


def sketch_of(hosts: Iterable[str]) -> ds.hll_sketch:
    s = new_sketch()
    for h in hosts:
        s.update(h)
    return s


def encode(sketch: ds.hll_sketch) -> str:
    """A sketch as wire text: base64 of DataSketches' compact serialisation."""
    return base64.b64encode(sketch.serialize_compact()).decode("ascii")


def decode(text: str | bytes) -> ds.hll_sketch:
    """A sketch from wire text or stored bytes; SketchError for anything else (what a sensor sends is data)."""
    try:
        raw = base64.b64decode(text, validate=True) if isinstance(text, str) else bytes(text)
    except (binascii.Error, ValueError):
        raise SketchError("not base64") from None
    if not 8 <= len(raw) <= 4096:
        raise SketchError(f"a sketch of {len(raw)} bytes")
    try:
        s = ds.hll_sketch.deserialize(raw)
    except Exception as e:  # noqa: BLE001 - the C++ library raises RuntimeError, ValueError...
        raise SketchError(f"not a HyperLogLog sketch ({e})") from None
    if s.lg_config_k > 12 or not math.isfinite(s.get_estimate()):
        raise SketchError("a sketch of another size")
    return s


def merge(parts: Iterable[ds.hll_sketch | bytes | str]) -> ds.hll_sketch:
    """The union of sketches (or their bytes): hosts in any of them, each counted once."""
    u = ds.hll_union(LG_K)
    for p in parts:
        u.update(p if isinstance(p, ds.hll_sketch) else decode(p))
    return u.get_result(ds.tgt_hll_type.HLL_4)


def estimate(sketch: ds.hll_sketch) -> int:
    """Distinct hosts, rounded (an empty sketch: 0)."""
    return 0 if sketch.is_empty() else max(1, round(sketch.get_estimate()))


def bounds(sketch: ds.hll_sketch, sigmas: int = 2) -> tuple[float, float]:
    """The estimate's lower and upper bound at `sigmas` standard deviations (1 to 3), from the library."""
    return sketch.get_lower_bound(sigmas), sketch.get_upper_bound(sigmas)


def kind_of(value: str) -> tuple[str, ...]:
    """The kinds a destination written by a person can be: an address is an address; anything else a name or a
    fingerprint (searched as each)."""
    try:
        ipaddress.ip_address(value)
        return ("address",)
    except ValueError:
        return ("domain", "server_name", "client_fingerprint")


def normal_key(kind: str, value: str) -> str:
    """Destinations in one written form: addresses compressed, names lower case without the trailing dot."""
    if kind == "address":
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            return value
    if kind in ("domain", "server_name"):
        return value.strip().rstrip(".").lower()
    return value.strip()
