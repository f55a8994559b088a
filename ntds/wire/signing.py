"""Ed25519 signatures on baselines: the aggregator signs what it promotes, sensors check before they score.

The link is already authenticated (CURVE), but a baseline decides what a sensor
stays silent about for weeks, so it carries its own proof of origin that
survives the trip through files and restarts: the signature is over the exact
bytes of the baseline file, kept beside it on the sensor and checked again at
every start. Keys are PyNaCl's Ed25519 (libsodium): `baseline-signing.key`
(secret, mode 0600, on the aggregator) and `baseline-signing.pub` (public, in
every sensor's `baseline_key`), both hex text.
"""

from __future__ import annotations

import os
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
