"""Admin users: names with argon2id password hashes (passlib, from the libpass distribution).

Hashing and verifying take tens of milliseconds of CPU by design, so they run in a worker
thread and never stall the event loop.
"""

from __future__ import annotations

import asyncio

from passlib.hash import argon2
from sqlalchemy import exc, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app import database
from app.errors import Conflict, InvalidRequest
from app.ids import new_id
from app.models import admin_users
from app.schemas import AdminUserCreated

MIN_PASSWORD_LENGTH = 12
# RFC 9106's second recommended setting: 64 MiB, 3 passes.
_hasher = argon2.using(type="ID", memory_cost=65_536, time_cost=3, parallelism=4)
# Verified against when the user does not exist, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash("earmark-no-such-user")


def _check_name(name: str) -> None:
    if not 1 <= len(name) <= 100 or ":" in name or not name.isprintable() or name.strip() != name:
        raise InvalidRequest(
            "admin user names are 1-100 printable characters without ':' or outer spaces",
            param="name",
        )


async def create_admin_user(engine: AsyncEngine, name: str, password: str) -> AdminUserCreated:
    _check_name(name)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidRequest(
            f"the password must be at least {MIN_PASSWORD_LENGTH} characters long",
            param="password",
        )
    password_hash = await asyncio.to_thread(_hasher.hash, password)
    now = database.utcnow()
    user = AdminUserCreated(id=new_id("adm"), name=name, created_at=now)
    try:
        async with database.write(engine) as conn:
            await conn.execute(
                insert(admin_users).values(
                    id=user.id,
                    name=name,
                    password_hash=password_hash,
                    created_at=now,
                    updated_at=now,
                )
            )
    except exc.IntegrityError:
        raise Conflict(f"an admin user named {name!r} already exists", param="name") from None
    return user


async def verify_admin_user(engine: AsyncEngine, name: str, password: str) -> bool:
    async with database.read(engine) as conn:
        stored = await conn.scalar(
            select(admin_users.c.password_hash).where(admin_users.c.name == name)
        )
    ok = await asyncio.to_thread(_hasher.verify, password, stored or _DUMMY_HASH)
    return ok and stored is not None
