"""``REID_API_KEYS`` entries: ``[SCOPE=]KEY`` with KEY the key or ``sha256:<hex>`` of it.

Parsed once (settings validate them at start) and kept as digests: the service compares
hashes, so a configuration that holds only ``sha256:`` entries never holds a secret.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from dataclasses import dataclass

__all__ = ["SCOPES", "ConfiguredKey", "digest", "new_key", "parse_keys"]

SCOPES = ("read", "write", "admin")  # each includes the ones before it


@dataclass(frozen=True)
class ConfiguredKey:
    """One ``REID_API_KEYS`` entry: the SHA-256 of the key and what it may do."""

    digest: bytes
    scope: str


def digest(key: str) -> bytes:
    """The SHA-256 a key is stored and compared as."""
    return hashlib.sha256(key.encode("utf-8")).digest()


@functools.lru_cache(maxsize=8)
def parse_keys(entries: tuple[str, ...]) -> tuple[ConfiguredKey, ...]:
    """``[SCOPE=]KEY`` entries (KEY plain or ``sha256:<64 hex>``); raises ``ValueError``."""
    keys = []
    for entry in entries:
        scope, sep, rest = entry.partition("=")
        if not sep or scope not in SCOPES:  # no scope given (a key may itself contain "=")
            scope, rest = "admin", entry
        if rest.startswith("sha256:"):
            try:
                stored = bytes.fromhex(rest.removeprefix("sha256:"))
            except ValueError:
                stored = b""
            if len(stored) != 32:
                raise ValueError("an API key entry 'sha256:...' needs 64 hex digits")
        else:
            stored = digest(rest)
        keys.append(ConfiguredKey(stored, scope))
    return tuple(keys)


def new_key(scope: str = "read") -> tuple[str, str]:
    """A fresh random key and its ``REID_API_KEYS`` entry (the hash, not the key)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    key = secrets.token_urlsafe(32)
    return key, f"{scope}=sha256:{digest(key).hex()}"
