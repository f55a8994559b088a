"""An indicator match as an alert body (wire schema `alert`, kind `intel`), for the sensor and for retro-hunts.

The alert names the local host (`src_ip`: the end of the flow inside the site,
the client where both or neither are), the other end, the indicator with its
source and confidence (`intel`), and its tier from the confidence
(`ntds.intel.indicators.tier_of`). Its pattern is the indicator, so repeats of
one host contacting one indicator are grouped into one alert with a count, like
every other kind.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ntds.detect.alerts import iso_ms
from ntds.detect.behind import flow_entry
from ntds.flows.traffic import FlowTraffic
from ntds.intel.indicators import Indicator, tier_of

WHAT = {
    "ip": "address",
    "net": "network",
    "domain": "domain",
    "ja3": "JA3",
    "ja3s": "JA3S",
    "ja4": "JA4",
    "hassh": "HASSH",
    "hassh_server": "HASSH-server",
}
SEEN = {
    "src_ip": "the source address",
    "dst_ip": "the destination address",
    "server_name": "the requested server name",
    "client_fingerprint": "the client's fingerprint",
    "server_fingerprint": "the server's fingerprint",
}


def _date(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t)) if t else "unknown"


def intel_alert(
    t: FlowTraffic,
    ind: Indicator,
    matched: str,
    seen: str,
    baseline_id: str,
    tier: int | None = None,
    local: Callable[[str], bool] | None = None,
    found_later: float = 0.0,
) -> dict:
    """One flow that matched `ind` on `matched` (one of ntds.intel.matching.FIELDS; `seen`: the flow's value
    there). `tier`: the flow's rarity tier if scored. `found_later`: when a retro-hunt found it (0: at flow end)."""
    if matched == "src_ip":  # a known-bad address that reached in: the local host is the other end
        host_is_src = False
    elif matched == "dst_ip":
        host_is_src = True
    else:  # names and fingerprints: the client, unless only the server is inside the site
        host_is_src = local is None or local(t.src_ip) or not local(t.dst_ip)
    host, peer = (t.src_ip, t.dst_ip) if host_is_src else (t.dst_ip, t.src_ip)
    host_port, peer_port = (t.src_port, t.dst_port) if host_is_src else (t.dst_port, t.src_port)
    what = WHAT[ind.type]
    later = f"; found later, by a retro-hunt on {_date(found_later)}" if found_later else ""
    expires = f"expires {_date(ind.expires)}" if ind.expires else "no expiry"
    facts = [
        {
            "axis": "indicator",
            "value": float(ind.confidence),
            "typical": 0.0,
            "score": float(ind.confidence),
            "text": f"{SEEN[matched]} {seen} matches the known-bad {what} {ind.value} from {ind.source}, confidence "
            f"{ind.confidence}/100 (added {_date(ind.added)}, {expires})",
        }
    ]
    if found_later:
        facts.append({
            "axis": "found later", "value": float(found_later), "typical": 0.0, "score": 0.0,
            "text": f"the contact was seen before the indicator reached the sensors; a retro-hunt on "
            f"{_date(found_later)} found it in what the fleet had already reported",
        })  # fmt: skip
    level = tier_of(ind.confidence)
    flow = flow_entry(t, tier)
    return {
        "kind": "intel",
        "signature": f"Known-bad {what} {ind.value} ({ind.source}, confidence {ind.confidence}): {host} -> "
        f"{peer}:{peer_port}{later}"[:512],
        "first_seen": iso_ms(t.start_ms),
        "last_seen": iso_ms(max(t.end_ms, t.start_ms)),
        "count": 1,
        "window_s": 0,
        "src_ip": host,
        "src_port": int(host_port),
        "dst_ip": peer,
        "dst_port": int(peer_port),
        "protocol": int(t.protocol),
        "application": t.application,
        "domain": t.server_name[:256] if matched == "server_name" else "",
        "pattern": f"{ind.type} {ind.value}"[:256],
        "flow_id": "",
        "community_id": flow["community_id"],  # computed once: the hash is most of an alert's cost
        "baseline_id": baseline_id,
        "baseline": "intel",
        "score": float(ind.confidence),
        "tier": level,
        "tier_label": f"confidence {ind.confidence}/100",
        "explanation": facts,
        "features": {},
        "flows": [flow],
        "flows_total": 1,
        "intel": [
            {
                "type": ind.type,
                "value": ind.value,
                "source": ind.source[:256],
                "confidence": int(ind.confidence),
                "added": int(max(ind.added, 0)),
                "expires": int(max(ind.expires, 0)),
                "matched": matched,
                "found_later": 1 if found_later else 0,
            }
        ],
    }


def fold(groups: dict, sensor: str, a: dict, max_flows: int = 32) -> None:
    """Group a retro-hunt's alerts as the sensors group theirs: one per (sensor, local host, application,
    indicator), with the count of flows, the newest `max_flows` of them, and the first and last seen."""
    from ntds.detect.behind import merge_flows
    from ntds.wire.schema import wire_time

    key = (sensor, a["src_ip"], a["application"], a["pattern"])
    g = groups.get(key)
    if g is None:
        groups[key] = a
        return
    g["count"] += 1
    g["flows"] = merge_flows(g["flows"], a["flows"])[-max_flows:]
    g["flows_total"] += 1
    g["first_seen"] = min(g["first_seen"], a["first_seen"], key=wire_time)
    g["last_seen"] = max(g["last_seen"], a["last_seen"], key=wire_time)
