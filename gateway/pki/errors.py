"""Errors of the PKI: each carries the file (or directory) and the reason."""

from __future__ import annotations

import os

__all__ = ["KeyExists", "PkiError", "PkiInvalid", "PkiMissing"]


class PkiError(Exception):
    """Base of PKI errors; `path` is the file or directory concerned."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason


class KeyExists(PkiError):
    """A key or certificate exists and `force` was not given."""


class PkiMissing(PkiError):
    """A file the operation needs (the CA, a certificate to revoke) is absent."""


class PkiInvalid(PkiError):
    """A file is unreadable or not what it should be, or a name is invalid."""
