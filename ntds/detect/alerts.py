"""Alert bodies (wire schema `alert`), built in one place for `run`, `replay` and `score`.

A flow alert names one flow (Flow.ID, its Community ID and its two ends in the
direction the flow went), the application, the baseline entry that judged it,
its score and tier, and the axes that made it rare, in words with units. A
host-level alert names the responsible host and what it did (the detector's
`Finding`). Both carry the baseline id the sensor was running with, so an
analyst can tell which model raised what.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime

from ntds.detect.baseline import METRIC_COLUMNS, SCORABLE_COLUMNS, entry_kind
from ntds.detect.behind import flow_entry
from ntds.detect.hosts.base import Finding
from ntds.detect.scoring import TIER_LABELS
from ntds.flows.columns import COLUMNS as FLOW_COLUMNS
from ntds.flows.traffic import FlowTraffic

IDENTITY = ["Flow.ID", "Source.IP", "Source.Port", "Destination.IP", "Destination.Port", "Protocol", "Timestamp"]
COLUMNS = list(dict.fromkeys([*IDENTITY, "ProtocolName", *SCORABLE_COLUMNS, *METRIC_COLUMNS]))
"""What scoring reads of a flow table."""
_TEXT = frozenset({"Flow.ID", "Source.IP", "Destination.IP", "Timestamp", "Label", "ProtocolName"})
FEATURE_NAMES: tuple[str, ...] = tuple(c for c in FLOW_COLUMNS if c not in _TEXT)
"""The numeric columns a flow alert carries as `features`."""
_FEATURE_INDEX = [FLOW_COLUMNS.index(c) for c in FEATURE_NAMES]
PORTED = (6, 17, 132)


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


_community = None


def community_id(protocol: int, src: str, dst: str, sport: int, dport: int) -> str:
    """Community ID v1 (base64, seed 0) of a TCP, UDP or SCTP flow; "" where it cannot be computed (ICMP
    without its type and code, which flow records do not keep)."""
    global _community
    if protocol not in PORTED:
        return ""
    import communityid

    if _community is None:
        # the library logs every hash at INFO: on a sensor that is one log line per alert, for nothing
        logging.getLogger("communityid").setLevel(logging.WARNING)
        _community = communityid.CommunityID()
    try:
        return _community.calc(communityid.FlowTuple(protocol, src, dst, sport, dport)) or ""
    except Exception:  # noqa: BLE001 - an address the library cannot parse: no hash, not a crash
        return ""


def features_map(row: tuple | None) -> dict[str, float]:
    """A flow's numeric columns by name, non-finite values left out (JSON and the wire carry finite numbers)."""
    if row is None:
        return {}
    out = {}
    for name, i in zip(FEATURE_NAMES, _FEATURE_INDEX):
        try:
            v = float(row[i])
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            out[name] = int(v) if v.is_integer() and abs(v) < 2**53 else v
    return out


def flow_alert(
    traffic: FlowTraffic,
    flow_id: str,
    entry: str,
    score: float,
    tier: int,
    explanation: list[dict],
    baseline_id: str,
    features: dict[str, float],
    capped_at: int | None = None,
    protocol: int | None = None,
) -> dict:
    """One rare flow as an alert body (count 1; grouping may fold repeats into it). `protocol`: the flow
    record's Protocol column, which the flow id uses (0 for protocols other than TCP and UDP in the unicauca
    profile), so an alert from a capture and from its flow file are the same."""
    t = traffic
    proto = t.protocol if protocol is None else protocol
    top = explanation[0] if explanation else None
    if top is not None:
        direction = "high" if top["value"] >= top["typical"] else "low"
        pattern = f"{t.dst_port} {top['axis']} {direction}"
        why = top["text"]
    else:
        pattern, why = str(t.dst_port), "unusual"
    if capped_at is not None:
        explanation = [*explanation, {
            "axis": "tier cap", "value": float(tier), "typical": float(capped_at), "score": 0.0,
            "text": f"rarer than its entry can measure: tier capped at {capped_at} ({TIER_LABELS[capped_at]}), "
            "the entry has too few flows for rarer tiers",
        }]  # fmt: skip
    return {
        "kind": "flow",
        "signature": f"Rare {t.application} flow {t.src_ip} -> {t.dst_ip}:{t.dst_port}: {why}",
        "first_seen": iso_ms(t.start_ms),
        "last_seen": iso_ms(max(t.end_ms, t.start_ms)),
        "count": 1,
        "window_s": 0,
        "src_ip": t.src_ip,
        "src_port": t.src_port,
        "dst_ip": t.dst_ip,
        "dst_port": t.dst_port,
        "protocol": proto,
        "application": t.application,
        "domain": "",
        "pattern": pattern,
        "flow_id": flow_id,
        "community_id": community_id(t.protocol, t.src_ip, t.dst_ip, t.src_port, t.dst_port),
        "baseline_id": baseline_id,
        "baseline": entry_kind(entry),
        "score": round(float(score), 6),
        "tier": int(tier),
        "tier_label": TIER_LABELS[int(tier)],
        "explanation": explanation,
        "features": features,
        "flows": [flow_entry(t, tier)],
        "flows_total": 1,
        "intel": [],
    }


def _finite(v: float) -> float:
    v = float(v)
    return v if math.isfinite(v) else 0.0


def host_alert(f: Finding, baseline_id: str, flows: list[dict] | None = None) -> dict:
    """A host-level detector's finding as an alert body; `flows`: the flows it counted (ntds.detect.behind), at most
    the newest 32 of the `count` behind it."""
    flows = flows or []
    return {
        "kind": f.kind,
        "signature": f.signature,
        "first_seen": iso_ms(f.first_ms),
        "last_seen": iso_ms(max(f.last_ms, f.first_ms)),
        "count": int(min(max(f.count, 0), 2**40)),
        "window_s": int(max(f.window_s, 0)),
        "src_ip": f.src_ip,
        "src_port": 0,
        "dst_ip": f.dst_ip,
        "dst_port": int(f.dst_port),
        "protocol": int(f.protocol),
        "application": f.application,
        "domain": f.domain,
        "pattern": f.pattern,
        "flow_id": "",
        "community_id": "",
        "baseline_id": baseline_id,
        "baseline": "detector",
        "score": round(_finite(f.score), 6),
        "tier": int(f.tier),
        "tier_label": TIER_LABELS[int(f.tier)],
        "explanation": [
            {
                "axis": str(x["what"]),
                "value": _finite(x["value"]),
                "typical": _finite(x["typical"]),
                "score": round(_finite(x["score"]), 4),
                "text": str(x["text"]),
            }
            for x in f.facts
        ],
        "features": {},
        "flows": flows,
        "flows_total": int(min(max(f.count, len(flows)), 2**40)),
        "intel": [],
    }


def summary_line(alert: dict) -> str:
    """One line for terminals and logs (callers pass it through `printable`)."""
    count = f" x{alert['count']}" if alert["count"] > 1 else ""
    src = f"{alert['src_ip']}:{alert['src_port']}" if alert["src_port"] else alert["src_ip"]
    dst = f"{alert['dst_ip']}:{alert['dst_port']}" if alert["dst_port"] else alert["dst_ip"]
    where = f"{src} -> {dst}" if dst else src
    app = f"  {alert['application']}" if alert["application"] else ""
    return f"{alert['first_seen']}  {alert['kind']}  tier {alert['tier']}{count}{app}  {where}  {alert['signature']}"


__all__ = ["COLUMNS", "FEATURE_NAMES", "community_id", "features_map", "flow_alert", "host_alert", "iso_ms"]
