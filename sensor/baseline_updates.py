"""Baselines pushed by the aggregator: assembled, checked, kept, and offered to the pipeline.

A push is one `baseline` message per part. When every part of a push has
arrived, the file is decompressed (bounded) and its SHA-256 checked; then its
grant (`ntds.wire.signing.Grant`): the Ed25519 signature over the grant's text
against `baseline_key`, that the grant names this file's SHA-256, that it is for
this sensor (or every sensor, "*"), and that it is newer than the grant of the
baseline the sensor runs: a higher serial, and a version at least as new unless
the grant is signed as a rollback. Last, the file is loaded exactly as a
configured baseline is (format, version, feature profile, scorers). Only then
is it written into the spool folder (`pushed-baseline.json`, and its grant and
signature in `pushed-baseline.json.grant`), where the next start finds it and
checks it again: a pushed baseline, and the serial it was granted under,
outlive restarts, and the configured file stays the fallback. An old signed
version pushed again (by anyone who can talk on the link) is refused: its
serial is not newer.

Anything wrong is refused with one log line and counted (`baselines_refused` in
health); the running baseline stays. A baseline kept by a sensor from before
grants (`pushed-baseline.json.sig`, a signature over the bare file) is still
used at start, with no serial to hold: the first granted push replaces it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from ntds.detect.baseline import MAX_FILE_BYTES, Baseline
from ntds.errors import InputError
from ntds.wire import signing
from ntds.wire.schema import Message
from sensor.pushes import PushedParts, Refused

__all__ = ["BaselineUpdates", "Refused"]

log = logging.getLogger("ntds.sensor.baselines")

PUSHED = "pushed-baseline.json"
RESIGN = "the aggregator must sign it anew (`ntds-aggregator baseline rollback --to VERSION`)"


class BaselineUpdates(PushedParts):
    what = "baseline"

    def __init__(self, key_file: Path | str, profile: str, folder: Path) -> None:
        super().__init__(folder / PUSHED, MAX_FILE_BYTES)
        self.key = signing.load_verify_key(key_file) if key_file else None
        self.profile = profile
        self.signature_path = folder / (PUSHED + ".sig")
        """A signature over the bare file, as sensors before grants kept it."""
        self.running: signing.Grant | None = self._kept_grant()
        """The grant of the newest push taken (kept across restarts): anything pushed must be newer."""

    def _kept_grant(self) -> signing.Grant | None:
        """The grant kept with the last push taken, if it verifies (its file need not: the serial still holds)."""
        if self.key is None or not self.grant_path.exists():
            return None
        try:
            kept = json.loads(self.grant_path.read_text())
            return signing.verify_grant(kept["grant"], kept["signature"], self.key)
        except (OSError, ValueError, KeyError, TypeError) as e:  # BadSignature is a ValueError
            log.error("ignoring %s: %s", self.grant_path, e)
            return None

    def stored(self) -> Baseline | None:
        """The baseline an earlier push left, if it still verifies (else None, with a log line)."""
        if not self.path.exists():
            return None
        try:
            if self.key is None:
                raise Refused("no baseline_key is configured")
            content = self.path.read_bytes()
            if self.running is not None:
                if hashlib.sha256(content).hexdigest() != self.running.sha256:
                    raise Refused(f"it is not the file its grant ({self.grant_path.name}) names")
            else:  # kept before grants: a signature over the file itself
                signing.verify(content, self.signature_path.read_text().strip(), self.key)
                log.warning("the pushed baseline %s was signed before versions were signed: used until the "
                            "aggregator pushes a granted one", self.path)  # fmt: skip
            return self._load(content, self.path)
        except (Refused, signing.BadSignature, OSError, InputError) as e:
            log.error("ignoring the pushed baseline %s: %s; using the configured one", self.path, e)
            return None

    def take(self, m: Message) -> Baseline | None:
        """One part; the new baseline when this part completes a push that checks out, else None.

        Raises Refused (counted) for a push that completes but fails a check."""
        b = m.body
        packed = self._gather(m, (m.seq, b["baseline_id"], b["sha256"], b["grant"], b["signature"], b["parts"]))
        if packed is None:
            return None
        try:
            if not b["grant"]:
                raise Refused(f"it is signed without a version (an aggregator from before version signing): {RESIGN}")
            content, digest, grant = self._opened(packed, b, self.key, signing.verify_grant)
            self._check_grant(grant, digest, m.sensor)
            baseline = self._load(content, Path(f"pushed baseline {b['baseline_id'][:80]}"))
        except (Refused, signing.BadSignature, InputError) as e:
            return self._refuse(str(e))
        self._keep(content, b)  # a crash before the grant leaves the old one, whose serial still holds
        self.signature_path.unlink(missing_ok=True)
        self.running = grant
        return baseline

    def _check_grant(self, grant: signing.Grant, digest: str, sensor: str) -> None:
        if grant.sha256 != digest:
            raise Refused("the signed grant names another file (SHA-256 differs)")
        if grant.to not in ("*", sensor):
            raise Refused(f"the grant is signed for sensor {grant.to[:64]!r}, not this one")
        now = self.running
        if now is None or grant == now:  # the very grant it runs: taken again (after a fallback to the configured)
            return
        if grant.serial <= now.serial:
            raise Refused(
                f"replayed: version {grant.version} under grant {grant.serial}, but this sensor already took grant "
                f"{now.serial} (version {now.version}); only a newer signature is taken"
            )
        if grant.version < now.version and not grant.rollback:
            raise Refused(
                f"version {grant.version} is older than version {now.version} this sensor runs and is not signed as "
                "a rollback"
            )

    def _load(self, content: bytes, name: Path) -> Baseline:
        tmp = self.path.with_name(".pushed-check.json")
        try:
            tmp.write_bytes(content)
            baseline = Baseline.load(tmp, feature_profile=self.profile)
        except InputError as e:
            raise InputError(str(e).replace(str(tmp), str(name))) from None
        finally:
            tmp.unlink(missing_ok=True)
        baseline.source = str(self.path)
        return baseline
