"""The virtual key format: ``sk-bf-`` + 43 base62 characters (256 bits) + a 6-character
CRC32 checksum.

A key with a typo fails the checksum and is refused without touching the database. The
database only ever sees a keyed digest of the key and a short display prefix.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import zlib

PREFIX = "sk-bf-"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_LENGTH = 43  # 62**43 > 2**256
_CHECKSUM_LENGTH = 6  # 62**6 > 2**32
KEY_LENGTH = len(PREFIX) + _BODY_LENGTH + _CHECKSUM_LENGTH
DISPLAY_LENGTH = len(PREFIX) + 6
_ALLOWED = frozenset(_ALPHABET)


def _base62(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(f"{PREFIX}{body}".encode()), _CHECKSUM_LENGTH)


def generate() -> str:
    body = _base62(secrets.randbits(256), _BODY_LENGTH)
    return f"{PREFIX}{body}{_checksum(body)}"


def is_well_formed(secret: str) -> bool:
    """True if ``secret`` has the shape and checksum of a key this gateway issued."""
    if len(secret) != KEY_LENGTH or not secret.startswith(PREFIX):
        return False
    rest = secret[len(PREFIX) :]
    if not _ALLOWED.issuperset(rest):
        return False
    body, checksum = rest[:_BODY_LENGTH], rest[_BODY_LENGTH:]
    return hmac.compare_digest(_checksum(body), checksum)


def digest(secret: str, pepper: str) -> bytes:
    """Keyed SHA-256 of the key: fast, because a 256-bit key needs no slow password hash."""
    return hmac.new(f"earmark-key-v1:{pepper}".encode(), secret.encode(), hashlib.sha256).digest()


def display_prefix(secret: str) -> str:
    return secret[:DISPLAY_LENGTH]
