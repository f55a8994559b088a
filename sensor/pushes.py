"""What every signed push in parts shares on the sensor: a baseline (sensor.baseline_updates) and an indicator set
(sensor.intel_updates) arrive the same way.

The parts of one push are gathered (a new push, or a resend, starts over), decoded and joined; the whole is
decompressed within a bound; every refusal is counted and drops the parts; and a push that checks out is kept as
its file first, then its grant, so a crash between leaves a grant that does not name the file (ignored at the next
start, and pushed again). What is checked in between (the signature, the serial, the content) is each kind's own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import zlib
from collections.abc import Callable
from pathlib import Path

from ntds.atomic import atomic_path, atomic_write_text
from ntds.wire import signing
from ntds.wire.schema import Message


class Refused(Exception):
    """A pushed file the sensor will not use; the message says why, in one line."""


class PushedParts:
    """The parts of one push being gathered, the refusals and takes counted, the kept file and its grant."""

    what = "file"
    """What is pushed, in refusals ("not a compressed baseline")."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.grant_path = path.with_name(path.name + ".grant")
        self.max_bytes = max_bytes
        self._parts: dict[int, bytes] = {}
        self._push: tuple | None = None
        self.refused = 0
        self.taken = 0

    def _gather(self, m: Message, push: tuple) -> bytes | None:
        """Take one part of the push `push` identifies; the joined, still compressed parts once all are in."""
        b = m.body
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
        return packed

    def _refuse(self, why: str) -> None:
        self.refused += 1
        self._push, self._parts = None, {}
        raise Refused(why)

    def _inflate(self, packed: bytes) -> bytes:
        """Decompress within `max_bytes`: a small push must not expand into the sensor's whole memory."""
        d = zlib.decompressobj()
        try:
            content = d.decompress(packed, self.max_bytes + 1)
        except zlib.error:
            raise Refused(f"not a compressed {self.what}") from None
        if len(content) > self.max_bytes or d.unconsumed_tail or not d.eof:
            raise Refused(f"truncated, or larger than {self.max_bytes // 2**20} MB")
        return content

    def _opened(self, packed: bytes, body: dict, key, verify: Callable) -> tuple[bytes, str, object]:
        """(content, its SHA-256, the verified grant) of a gathered push: the announced file, signed by `key`.
        A bad signature raises signing.BadSignature, anything else wrong Refused."""
        content = self._inflate(packed)
        digest = hashlib.sha256(content).hexdigest()
        if digest != body["sha256"]:
            raise Refused("the parts do not add up to the announced file (SHA-256 differs)")
        if key is None:
            raise Refused(f"no baseline_key is configured, so no pushed {self.what} can be trusted")
        try:
            grant = verify(body["grant"], body["signature"], key)
        except signing.BadSignature:
            raise
        except ValueError as e:
            raise Refused(str(e)) from None
        return content, digest, grant

    def _keep(self, content: bytes, body: dict) -> None:
        """The file first, then its grant (see the module's docstring)."""
        with atomic_path(self.path) as tmp:
            tmp.write_bytes(content)
        atomic_write_text(self.grant_path, json.dumps({"grant": body["grant"], "signature": body["signature"]}) + "\n")
        self.taken += 1
