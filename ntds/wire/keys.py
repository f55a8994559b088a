"""CURVE key pairs for the sensor-aggregator link, written with safe permissions.

A key pair is NAME.key (public, shareable: copy it into the aggregator's
allow-list folder) and NAME.key_secret (secret: mode 0600, in a 0700 folder).
The aggregator binds a sensor id to its public key by the file name in the
allow-list: `tap-01.key` may only send as sensor `tap-01`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ntds.errors import InputError

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
"""A sensor id and key name: it becomes a file name, a ZeroMQ user id, a log and report field."""


def generate(directory: str | Path, name: str) -> tuple[Path, Path]:
    import zmq.auth

    d = Path(directory)
    if not NAME.fullmatch(name):
        raise InputError(f"bad key name {name!r:.80}: use 1 to 64 letters, digits, dots, dashes or underscores")
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    public, secret = d / f"{name}.key", d / f"{name}.key_secret"
    if public.exists() or secret.exists():
        raise InputError(f"{public}: a key pair of that name exists already (remove it first)")
    old = os.umask(0o077)
    try:
        pub, sec = zmq.auth.create_certificates(str(d), name)
    finally:
        os.umask(old)
    os.chmod(sec, 0o600)
    os.chmod(pub, 0o644)
    return Path(pub), Path(sec)


def load_pair(secret_file: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a .key_secret file."""
    import zmq.auth

    p = Path(secret_file)
    try:
        public, secret = zmq.auth.load_certificate(str(p))
    except (OSError, ValueError) as e:
        raise InputError(f"{p}: cannot read key pair: {e}") from None
    if secret is None:
        raise InputError(f"{p}: holds no secret key")
    mode = p.stat().st_mode & 0o777
    if mode & 0o077:
        raise InputError(f"{p}: secret key is readable by others (mode {mode:o}); chmod 600 it")
    return public, secret


def load_public(public_file: str | Path) -> bytes:
    import zmq.auth

    p = Path(public_file)
    try:
        public, _ = zmq.auth.load_certificate(str(p))
    except (OSError, ValueError) as e:
        raise InputError(f"{p}: cannot read public key: {e}") from None
    return public
