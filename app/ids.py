"""Opaque, time-ordered identifiers such as ``key_01JD…`` (a ULID behind a type prefix).

Ordering by id is ordering by creation time, which makes cursor pagination a single
indexed range scan.
"""

from __future__ import annotations

import secrets
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# What an id may look like in a request: anything else (NUL bytes, spaces, 10 kB) is a 400
# before it reaches a query. Loose enough that a mistyped id is still a 404.
ID_PATTERN = r"^[a-z]{2,8}_[0-9A-Za-z]{1,32}$"
ID_MAX_LENGTH = 40  # the width of every id column (String(40) in storage/models.py)


def new_id(prefix: str) -> str:
    value = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return f"{prefix}_{''.join(reversed(chars))}"
