"""Host-level detectors: what only a view per host sees (scans, brute force, beacons, tunnels, leaks).

Importing this package registers every detector in `DETECTORS`.
"""

from ntds.detect.hosts import beacon, bruteforce, dns, exfiltration, icmp, longconn, scans  # noqa: F401
from ntds.detect.hosts.base import DETECTORS, Detector, Finding, Option

__all__ = ["DETECTORS", "Detector", "Finding", "Option"]
