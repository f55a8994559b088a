"""Indicator sets pushed by the aggregator: assembled, checked, kept, and handed to detection.

The mirror of sensor.baseline_updates for the `intel` message. When every part
of a push has arrived, the file is decompressed (bounded) and its SHA-256
checked; then its grant (`ntds.wire.signing.IntelGrant`): the Ed25519 signature
against `baseline_key` (one key vouches for everything the aggregator pushes),
that it names this file, is for this sensor (or "*"), and has a serial above the
set the sensor runs: an older set pushed again (with indicators removed since)
is refused. Last, every line of the file is read and normalised
(ntds.intel.matching.read_set) into the matcher. Only then is it kept in the
spool folder (`pushed-intel.txt` and `pushed-intel.txt.grant`), where the next
start finds it and checks it again, so a sensor that restarts matches with the
set it had, and a sensor that was offline gets the current one when its hello
reaches the aggregator.

Anything wrong is refused with one log line and counted (`intel_refused` in
health); the running set stays.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from ntds.intel.matching import IntelSet, read_set
from ntds.wire import signing
from ntds.wire.schema import Message
from sensor.pushes import PushedParts, Refused

__all__ = ["IntelUpdates", "Refused"]

log = logging.getLogger("ntds.sensor.intel")

PUSHED = "pushed-intel.txt"
MAX_SET_BYTES = 1 << 30
"""Largest set file taken (1 GiB uncompressed: about twenty million indicators)."""


class IntelUpdates(PushedParts):
    what = "indicator set"

    def __init__(self, key_file: Path | str, folder: Path) -> None:
        super().__init__(folder / PUSHED, MAX_SET_BYTES)
        self.key = signing.load_verify_key(key_file) if key_file else None
        self.running: signing.IntelGrant | None = None
        """The grant of the set in use (kept across restarts): anything pushed must have a higher serial."""

    @property
    def serial(self) -> int:
        return self.running.serial if self.running else 0

    def stored(self) -> IntelSet | None:
        """The set an earlier push left, if it still verifies (else None, with a log line)."""
        if self.key is None or not self.path.exists() or not self.grant_path.exists():
            return None
        try:
            kept = json.loads(self.grant_path.read_text())
            grant = signing.verify_intel_grant(kept["grant"], kept["signature"], self.key)
            content = self.path.read_bytes()
            if hashlib.sha256(content).hexdigest() != grant.sha256:
                raise Refused(f"it is not the file its grant ({self.grant_path.name}) names")
            intel = self._load(content)
        except (OSError, ValueError, KeyError, TypeError, Refused) as e:  # BadSignature is a ValueError
            log.error("ignoring the pushed indicator set %s: %s; matching no indicators until the next push", self.path,
                      e)  # fmt: skip
            return None
        self.running = grant
        return intel

    def take(self, m: Message) -> IntelSet | None:
        """One part; the new set when this part completes a push that checks out, else None.

        Raises Refused (counted) for a push that completes but fails a check."""
        b = m.body
        packed = self._gather(m, (m.seq, b["sha256"], b["grant"], b["signature"], b["parts"]))
        if packed is None:
            return None
        try:
            content, digest, grant = self._opened(packed, b, self.key, signing.verify_intel_grant)
            self._check_grant(grant, digest, m.sensor)
            intel = self._load(content)
        except (Refused, signing.BadSignature) as e:
            return self._refuse(str(e))
        self._keep(content, b)
        self.running = grant
        return intel

    def _check_grant(self, grant: signing.IntelGrant, digest: str, sensor: str) -> None:
        if grant.sha256 != digest:
            raise Refused("the signed grant names another file (SHA-256 differs)")
        if grant.to not in ("*", sensor):
            raise Refused(f"the grant is signed for sensor {grant.to[:64]!r}, not this one")
        now = self.running
        if now is not None and grant != now and grant.serial <= now.serial:
            raise Refused(f"replayed: indicator set {grant.serial}, but this sensor already took set {now.serial}; "
                          "only a newer signature is taken")  # fmt: skip

    @staticmethod
    def _load(content: bytes) -> IntelSet:
        try:
            # check=False: the signature already proved the aggregator wrote these lines in their normal form; a
            # line that still does not parse is refused below, never matched half-read
            return IntelSet(read_set(content, check=False))
        except (UnicodeDecodeError, ValueError) as e:
            raise Refused(f"not an indicator set: {e}") from None
