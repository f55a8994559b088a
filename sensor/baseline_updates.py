"""Baselines pushed by the aggregator: assembled, checked, kept, and offered to the pipeline.

A push is one `baseline` message per part. When every part of a push has
arrived, the file is decompressed (bounded), its SHA-256 and its Ed25519
signature are checked against `baseline_key`, and it is loaded exactly as a
configured baseline is (format, version, feature profile, scorers). Only then
is it written, with its signature, into the spool folder (`pushed-baseline.json`
and `.sig`), where the next start finds it and checks it again: a pushed
baseline outlives restarts, and the configured file stays the fallback.

Anything wrong is refused with one log line and counted (`baselines_refused` in
health); the running baseline stays.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import zlib
from pathlib import Path

from ntds.atomic import atomic_path, atomic_write_text
from ntds.detect.baseline import MAX_FILE_BYTES, Baseline
from ntds.errors import InputError
from ntds.wire import signing
from ntds.wire.schema import Message

log = logging.getLogger("ntds.sensor.baselines")

PUSHED = "pushed-baseline.json"


class Refused(Exception):
    """A pushed baseline the sensor will not use; the message says why, in one line."""


class BaselineUpdates:
    def __init__(self, key_file: Path | str, profile: str, folder: Path) -> None:
        self.key = signing.load_verify_key(key_file) if key_file else None
        self.profile = profile
        self.path = folder / PUSHED
        self.signature_path = folder / (PUSHED + ".sig")
        self._parts: dict[int, bytes] = {}
        self._push: tuple | None = None
        self.refused = 0
        self.taken = 0

    def stored(self) -> Baseline | None:
        """The baseline an earlier push left, if it still verifies (else None, with a log line)."""
        if not self.path.exists():
            return None
        try:
            if self.key is None:
                raise Refused("no baseline_key is configured")
            content = self.path.read_bytes()
            signing.verify(content, self.signature_path.read_text().strip(), self.key)
            return self._load(content, self.path)
        except (Refused, signing.BadSignature, OSError, InputError) as e:
            log.error("ignoring the pushed baseline %s: %s; using the configured one", self.path, e)
            return None

    def take(self, m: Message) -> Baseline | None:
        """One part; the new baseline when this part completes a push that checks out, else None.

        Raises Refused (counted) for a push that completes but fails a check."""
        b = m.body
        push = (m.seq, b["baseline_id"], b["sha256"], b["signature"], b["parts"])
        if push != self._push:  # a new push (or a resend) starts over
            self._push, self._parts = push, {}
        if b["part"] >= b["parts"]:
            return self._refuse(f"part {b['part']} of {b['parts']}")
        try:
            self._parts[b["part"]] = base64.b64decode(b["data"], validate=True)
        except (binascii.Error, ValueError):
            return self._refuse("a part is not base64")
        if len(self._parts) < b["parts"]:
            return None
        packed = b"".join(self._parts[i] for i in range(b["parts"]))
        self._push, self._parts = None, {}
        try:
            content = self._inflate(packed)
            if hashlib.sha256(content).hexdigest() != b["sha256"]:
                raise Refused("the parts do not add up to the announced file (SHA-256 differs)")
            if self.key is None:
                raise Refused("no baseline_key is configured, so no pushed baseline can be trusted")
            signing.verify(content, b["signature"], self.key)
            baseline = self._load(content, Path(f"pushed baseline {b['baseline_id'][:80]}"))
        except (Refused, signing.BadSignature, InputError) as e:
            return self._refuse(str(e))
        with atomic_path(self.path) as tmp:
            tmp.write_bytes(content)
        atomic_write_text(self.signature_path, b["signature"] + "\n")
        self.taken += 1
        return baseline

    def _refuse(self, why: str) -> None:
        self.refused += 1
        self._push, self._parts = None, {}
        raise Refused(why)

    @staticmethod
    def _inflate(packed: bytes) -> bytes:
        d = zlib.decompressobj()
        try:
            content = d.decompress(packed, MAX_FILE_BYTES + 1)
        except zlib.error:
            raise Refused("not a compressed baseline") from None
        if len(content) > MAX_FILE_BYTES or d.unconsumed_tail or not d.eof:
            raise Refused(f"truncated, or larger than {MAX_FILE_BYTES // 2**20} MB")
        return content

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
