"""What the beacon and brute-force detectors must agree on, so that one story wins: check-ins or logins.

The same traffic can fit both: an implant polling its server every few seconds
opens many short, similar connections to one service, as a password guesser
does; a password guesser with a fixed delay is as regular as an implant. Each
detector asks the same two questions of the traffic it keeps, and stays quiet
when the other's story explains it better (its alert mentions the other):

- **Regular check-ins** (`regularity`): are the gaps between a client's
  connections to one destination regular beyond chance? A timer with the
  random jitter C2 frameworks add (Cobalt Strike, Empire, Sliver: 0-50% of
  the period) keeps every gap within +-50% of the typical one; connections
  that arrive independently (a Poisson process: people, browsers) put 35% of
  their gaps there, and bursty traffic fewer. The test counts the gaps within
  that band and asks how likely so many are from independent arrivals (the
  binomial tail), at lags 1, 2 and 3 so that a check-in made of two or three
  connections (a GET then a POST) is seen too; the chance is multiplied by the
  three lags tried (Bonferroni). A series is regular when at least
  `REGULAR_SHARE` of its gaps are in the band (the effect: most of them, not
  a slight tendency), they cover at least half its time span (a timer keeps
  running; a backup's few back-to-back transfers each night do not), and the
  chance is at most `CHANCE`.
- **Authentication** (`authentication_service`): is the service one that
  logs people in (by nDPI's application, else by its well-known port)?
  Repeated short sessions to such a service are login attempts: brute force's
  story even when they are regular. Elsewhere, regular check-ins to a
  destination outside the site are a beacon's story, whatever their size
  (RITA analyses beacons from internal hosts to external ones for the same
  reason: a command server is on the Internet).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace
from functools import lru_cache

from ntds.detect.explain import duration

JITTER = 0.5
"""Half-width of the band around the typical gap, as a share of it: the largest jitter C2 frameworks add."""
REGULAR_SHARE = 0.8
"""Share of the gaps that must lie in the band (a missed or doubled check-in now and then is allowed)."""
CHANCE = 1e-6
"""Largest chance that independent arrivals put so many gaps in the band."""
COVERAGE = 0.5
"""Share of the series' time span the regular gaps must cover: a timer keeps running, while a few back-to-back
transfers each night (a backup) are a burst repeated, however regular within it."""
LAGS = (1, 2, 3)
"""Connections per check-in tried: gaps between every k-th connection."""
BANDS = (0.1, 0.25)
"""Narrower bands tried as well (up to `JITTER`): a timer with little jitter shows in fewer check-ins."""

AUTH_PORTS = (21, 22, 23, 25, 88, 110, 139, 143, 389, 445, 465, 587, 636, 993, 995, 1433, 1521, 1812, 3306, 3389,
              5060, 5061, 5432, 5900)  # fmt: skip
AUTH_APPLICATIONS = ("SSH", "FTP_CONTROL", "TELNET", "RDP", "SMBV1", "SMBV23", "SMB", "IMAP", "IMAPS", "POP3", "POPS",
                     "SMTP", "SMTPS", "MYSQL", "POSTGRESQL", "MSSQL-TDS", "ORACLE", "VNC", "SIP", "LDAP", "KERBEROS",
                     "RADIUS")  # fmt: skip
"""nDPI's names of services that authenticate their clients (compared upper case; SSL.SSH's tail counts too)."""


def _erlang_cdf(k: int, x: float) -> float:
    """P(X <= x) for the sum of k unit exponentials (the gap over k arrivals of a Poisson process)."""
    if x <= 0:
        return 0.0
    total = term = 1.0
    for i in range(1, k):
        term *= x / i
        total += term
    return 1 - math.exp(-x) * total


@lru_cache(maxsize=64)
def chance_in_band(lag: int, jitter: float = JITTER) -> float:
    """Share of a Poisson process's lag-k gaps within +-jitter of their median: 0.354 at lag 1 for +-50%."""
    lo, hi = 0.0, 20.0 * lag
    for _ in range(80):  # the median, by bisection
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _erlang_cdf(lag, mid) < 0.5 else (lo, mid)
    median = (lo + hi) / 2
    return _erlang_cdf(lag, median * (1 + jitter)) - _erlang_cdf(lag, median * (1 - jitter))


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    base = math.lgamma(n + 1)
    terms = [base - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


@dataclass(frozen=True)
class Regularity:
    """How regular a series of connection starts is (see the module docstring)."""

    chance: float
    """Chance that independent arrivals put so many gaps in the band (Bonferroni over the lags tried): 1.0 if
    there is too little to say."""
    period_ms: float
    """The typical gap between check-ins (the median at the lag that fits best)."""
    lag: int
    """Connections per check-in."""
    in_band: int
    gaps: int
    jitter: float = JITTER
    coverage: float = 0.0
    """Share of the series' time span its regular gaps cover."""

    @property
    def share(self) -> float:
        return self.in_band / self.gaps if self.gaps else 0.0

    def regular(self, share: float = REGULAR_SHARE, chance: float = CHANCE) -> bool:
        return self.gaps > 0 and self.share >= share and self.chance <= chance and self.coverage >= COVERAGE

    def text(self) -> str:
        each = f" ({self.lag} connections each)" if self.lag > 1 else ""
        return (
            f"a check-in every {duration(self.period_ms * 1000)}{each}: {self.in_band} of {self.gaps} gaps within "
            f"±{self.jitter:.0%} of it (independent arrivals: {chance_in_band(self.lag, self.jitter):.0%}; "
            f"chance {self.chance:.1e})"
        )


NOTHING = Regularity(1.0, 0.0, 1, 0, 0)


def regularity(
    times_ms: list[int], jitter: float = JITTER, lags: tuple[int, ...] = LAGS, min_period_ms: float = 0.0
) -> Regularity:
    """The regularity of sorted connection start times: at each lag k, the gaps between every connection and the
    k-th after it (overlapping, so a check-in's extra connections shift no phase; counted as one in k, as
    independent), their median the period; the chance is the smallest binomial tail over the bands within
    `jitter` (+-10%, 25%, 50%: a tight timer shows in fewer check-ins), times the lags and bands tried. The lag
    with the smallest chance wins; a period under `min_period_ms` is no timer."""
    bands = tuple(b for b in BANDS if b < jitter) + (jitter,)
    best = NOTHING
    for k in lags:
        gaps = [times_ms[i + k] - times_ms[i] for i in range(len(times_ms) - k)]
        if len(gaps) < 2 * k:
            continue
        mid = statistics.median(gaps)
        if mid <= 0 or mid < min_period_ms:
            continue
        p = 1.0
        for band in bands:
            width = band * mid
            inside = sum(1 for g in gaps if abs(g - mid) <= width)
            p = min(p, binomial_tail(inside // k, len(gaps) // k, chance_in_band(k, band)))
        if best is NOTHING or p < best.chance:
            covered = sum(g for g in gaps if abs(g - mid) <= width) / k
            span = times_ms[-1] - times_ms[0]
            best = Regularity(p, mid, k, inside, len(gaps), jitter, covered / span if span > 0 else 0.0)
    if best is NOTHING:
        return best
    tried = len(lags) * len(bands)
    return replace(best, chance=min(1.0, best.chance * tried))


def authentication_service(port: int, application: str, ports: frozenset[int] | None = None) -> str:
    """The name of the authenticating service a flow reaches ("" if none): nDPI's application, else the port."""
    app = application.upper()
    for name in app.split("."):
        if name in AUTH_APPLICATIONS:
            return name
    if port in (ports if ports is not None else AUTH_PORTS):
        return SERVICE_NAMES.get(port, f"port {port}")
    return ""


SERVICE_NAMES = {21: "FTP", 22: "SSH", 23: "telnet", 25: "SMTP", 88: "Kerberos", 110: "POP3", 139: "SMB", 143: "IMAP",
                 389: "LDAP", 445: "SMB", 465: "SMTPS", 587: "SMTP", 636: "LDAPS", 993: "IMAPS", 995: "POP3S",
                 1433: "SQL Server", 1521: "Oracle", 1812: "RADIUS", 3306: "MySQL", 3389: "RDP", 5060: "SIP",
                 5061: "SIP", 5432: "PostgreSQL", 5900: "VNC", 80: "HTTP", 443: "HTTPS", 8080: "HTTP"}  # fmt: skip
