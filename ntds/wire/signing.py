"""Ed25519 signatures on baselines and indicator sets: the aggregator signs what it promotes, sensors check first.

The link is already authenticated (CURVE), but a baseline decides what a sensor
stays silent about for weeks, so it carries its own proof of origin that
survives the trip through files and restarts: the signature is over the exact
bytes of the baseline file, kept beside it on the sensor and checked again at
every start. Keys are PyNaCl's Ed25519 (libsodium): `baseline-signing.key`
(secret, mode 0600, on the aggregator) and `baseline-signing.pub` (public, in
every sensor's `baseline_key`), both hex text.

What is signed is a grant: a small JSON text naming the file (its SHA-256), the
aggregator's version number of it, a serial number that grows with every
signature the key's holder makes (`baseline promote`, `baseline rollback`),
whether it is a rollback, and which sensors it is for ("*": every sensor that
trusts the key). A sensor takes only a grant whose serial is above the one it
runs, so an old signed version pushed again is refused, and a version older
than its own only when the grant says it is a rollback. Signatures over the
bare file (before grants) still verify a file already kept, but are refused
when pushed: such a version must be signed again.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ntds.errors import InputError

SECRET_NAME, PUBLIC_NAME = "baseline-signing.key", "baseline-signing.pub"


class BadSignature(ValueError):
    """A baseline whose signature does not verify under the configured key."""


def generate(directory: str | Path) -> tuple[Path, Path]:
    """A new signing key pair in `directory`: (public file, secret file). Refuses to overwrite."""
    from nacl.signing import SigningKey

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    public, secret = d / PUBLIC_NAME, d / SECRET_NAME
    if public.exists() or secret.exists():
        raise InputError(f"{secret}: a baseline signing key exists already (remove it first)")
    key = SigningKey.generate()
    old = os.umask(0o077)
    try:
        secret.write_text(key.encode().hex() + "\n")
    finally:
        os.umask(old)
    os.chmod(secret, 0o600)
    public.write_text(key.verify_key.encode().hex() + "\n")
    os.chmod(public, 0o644)
    return public, secret


def _hex_key(path: str | Path, what: str) -> bytes:
    p = Path(path)
    try:
        text = p.read_text(encoding="ascii").strip()
        raw = bytes.fromhex(text)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{p}: cannot read the {what}: {getattr(e, 'strerror', None) or e}") from None
    if len(raw) != 32:
        raise InputError(f"{p}: not an Ed25519 {what} (32 bytes of hex expected)")
    return raw


def load_signing_key(path: str | Path):
    """The aggregator's secret key; refused when others can read it."""
    from nacl.signing import SigningKey

    raw = _hex_key(path, "baseline signing key")
    mode = Path(path).stat().st_mode & 0o777
    if mode & 0o077:
        raise InputError(f"{path}: the signing key is readable by others (mode {mode:o}); chmod 600 it")
    return SigningKey(raw)


def load_verify_key(path: str | Path):
    from nacl.signing import VerifyKey

    return VerifyKey(_hex_key(path, "baseline public key"))


def sign(content: bytes, key) -> str:
    """The hex Ed25519 signature of `content`."""
    return key.sign(content).signature.hex()


def verify(content: bytes, signature: str, key) -> None:
    """Raises BadSignature unless `signature` (hex) is `key`'s signature of exactly `content`."""
    from nacl.exceptions import BadSignatureError

    try:
        key.verify(content, bytes.fromhex(signature))
    except (BadSignatureError, ValueError, TypeError):
        raise BadSignature("the signature does not match the aggregator's baseline key") from None


GRANT_FORMAT = "ntds-baseline-grant"
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Grant:
    """What the signing key's holder vouches for: this file, as this version, for these sensors."""

    serial: int
    """Grows by one with every grant signed (promotion or rollback): a sensor takes only a newer one."""
    version: int
    """The aggregator's version number of the file (`baseline versions`)."""
    sha256: str
    baseline_id: str
    rollback: bool = False
    """True when the version is older than the newest promoted one: a sensor running a newer version takes it
    only then."""
    to: str = "*"
    """The sensor id the grant is for, or "*" for every sensor trusting the key (the site's fleet)."""
    signed: str = ""
    """When it was signed (ISO-8601 UTC); informational."""

    def text(self) -> str:
        """The exact text that is signed and sent."""
        return json.dumps({"format": GRANT_FORMAT} | asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def parse(cls, text: str) -> Grant:
        """A grant from its signed text; ValueError (one line) for anything that is not one."""
        try:
            doc = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            raise ValueError("the signed grant is not JSON") from None
        names = {"format", "serial", "version", "sha256", "baseline_id", "rollback", "to", "signed"}
        if not isinstance(doc, dict) or doc.get("format") != GRANT_FORMAT or set(doc) != names:
            raise ValueError("the signed grant is not an ntds baseline grant")
        ints = all(isinstance(doc[k], int) and not isinstance(doc[k], bool) and 0 < doc[k] < 2**53
                   for k in ("serial", "version"))  # fmt: skip
        texts = all(isinstance(doc[k], str) and len(doc[k]) <= 200 for k in ("baseline_id", "to", "signed"))
        if not (ints and texts and isinstance(doc["rollback"], bool) and isinstance(doc["sha256"], str)
                and _SHA256.fullmatch(doc["sha256"])):  # fmt: skip
            raise ValueError("the signed grant has a field of the wrong type")
        doc.pop("format")
        return cls(**doc)


def sign_grant(grant: Grant, key) -> tuple[str, str]:
    """(the grant's text, its hex signature)."""
    text = grant.text()
    return text, sign(text.encode("utf-8"), key)


def verify_grant(text: str, signature: str, key) -> Grant:
    """The grant, if `signature` is `key`'s signature of exactly `text`; BadSignature or ValueError otherwise."""
    verify(text.encode("utf-8"), signature, key)
    return Grant.parse(text)


INTEL_GRANT_FORMAT = "ntds-intel-grant"


@dataclass(frozen=True)
class IntelGrant:
    """What the signing key's holder vouches for in an indicator set: this file, under this serial, for these
    sensors. Signed with the same key as baselines (one trust anchor per site), but a format of its own, so a
    baseline's grant can never pass for an indicator set's or the other way round."""

    serial: int
    """Grows by one with every set signed (`intel add`, `remove`, `expire`): a sensor takes only a higher one, so
    an old set (indicators since removed) cannot be pushed again."""
    sha256: str
    indicators: int
    to: str = "*"
    signed: str = ""

    def text(self) -> str:
        return json.dumps({"format": INTEL_GRANT_FORMAT} | asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def parse(cls, text: str) -> IntelGrant:
        """A grant from its signed text; ValueError (one line) for anything that is not one."""
        try:
            doc = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            raise ValueError("the signed grant is not JSON") from None
        names = {"format", "serial", "sha256", "indicators", "to", "signed"}
        if not isinstance(doc, dict) or doc.get("format") != INTEL_GRANT_FORMAT or set(doc) != names:
            raise ValueError("the signed grant is not an ntds indicator-set grant")
        ok = (isinstance(doc["serial"], int) and not isinstance(doc["serial"], bool) and 0 < doc["serial"] < 2**53
              and isinstance(doc["indicators"], int) and not isinstance(doc["indicators"], bool)
              and 0 <= doc["indicators"] < 2**53 and isinstance(doc["sha256"], str) and _SHA256.fullmatch(doc["sha256"])
              and all(isinstance(doc[k], str) and len(doc[k]) <= 200 for k in ("to", "signed")))  # fmt: skip
        if not ok:
            raise ValueError("the signed grant has a field of the wrong type")
        doc.pop("format")
        return cls(**doc)


def verify_intel_grant(text: str, signature: str, key) -> IntelGrant:
    """The grant, if `signature` is `key`'s signature of exactly `text`; BadSignature or ValueError otherwise."""
    verify(text.encode("utf-8"), signature, key)
    return IntelGrant.parse(text)
