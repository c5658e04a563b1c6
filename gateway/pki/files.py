"""Reading and writing PKI files safely.

Owns file modes and the no-overwrite rule: private keys are created with
``os.open(O_CREAT|O_EXCL, 0o600)`` so they are never readable by others, not
even for an instant, and nothing that exists is replaced unless ``force``.
With ``force`` the new content goes to a temporary file in the same
directory (same mode) and is renamed over the old one, so a reader never sees
half a file.  Foreign errors (OSError, cryptography's ValueError) become
:class:`~redirgate.gateway.pki.errors.PkiError` here.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from redirgate.gateway.pki.errors import KeyExists, PkiError, PkiInvalid, PkiMissing

__all__ = [
    "KEY_MODE",
    "PUBLIC_MODE",
    "load_certificate",
    "load_private_key",
    "write_certificate",
    "write_file",
    "write_private_key",
]

KEY_MODE = 0o600
PUBLIC_MODE = 0o644


def write_file(path: Path, data: bytes, *, mode: int, force: bool = False) -> None:
    """Create `path` with `mode` holding `data`; KeyExists if present and not `force`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if force:
        target = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    else:
        target = path
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise KeyExists(path, "already exists (use --force to replace it)") from None
    except OSError as exc:
        raise PkiError(path, f"cannot create: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)  # umask may have narrowed or widened nothing; be exact
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if target != path:
            os.replace(target, path)
    except OSError as exc:
        if target != path:
            target.unlink(missing_ok=True)
        raise PkiError(path, f"cannot write: {exc.strerror}") from exc


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey, *, force: bool = False) -> None:
    """PKCS#8 PEM, unencrypted (services read it unattended), mode 0600."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_file(path, pem, mode=KEY_MODE, force=force)


def write_certificate(path: Path, *certs: x509.Certificate, force: bool = False) -> None:
    write_file(path, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs), mode=PUBLIC_MODE, force=force)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PkiMissing(path, f"no {what} here") from None
    except OSError as exc:
        raise PkiError(path, f"cannot read {what}: {exc.strerror}") from exc


def load_certificate(path: Path) -> x509.Certificate:
    data = _read(path, "certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise PkiInvalid(path, f"not a PEM certificate: {exc}") from exc


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise PkiInvalid(path, f"not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiInvalid(path, "not an EC private key")
    return key
