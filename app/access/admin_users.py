"""Admin users: names with argon2id password hashes (passlib, from the libpass distribution).

Hashing and verifying take tens of milliseconds of CPU and 64 MiB by design, so at the
gateway they run in the bounded password pool, never on the event loop; a name that does
not exist costs no hash but takes as long as one, so timing does not tell which names do.
"""

from __future__ import annotations

import asyncio
import functools
import time
import unicodedata

from passlib.hash import argon2
from sqlalchemy import delete, exc, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.errors import Conflict, InvalidRequest, NotFound
from app.ids import new_id
from app.ops import audit
from app.ops.audit import Actor
from app.runtime.executors import FairPool
from app.schemas import AdminUserCreated
from app.storage import database
from app.storage.models import admin_users

MIN_PASSWORD_LENGTH = 12
# RFC 9106's second recommended setting: 64 MiB, 3 passes.
_hasher = argon2.using(type="ID", memory_cost=65_536, time_cost=3, parallelism=4)


@functools.cache
def _dummy_hash() -> str:
    """A hash to time a real check by, made once, when first needed."""
    return _hasher.hash("earmark-no-such-user")


def _check_name(name: str) -> str:
    name = unicodedata.normalize("NFC", name)
    if not 1 <= len(name) <= 100 or ":" in name or not name.isprintable() or name.strip() != name:
        raise InvalidRequest(
            "admin user names are 1-100 printable characters without ':' or outer spaces",
            param="name",
        )
    return name


async def _hashed(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidRequest(
            f"the password must be at least {MIN_PASSWORD_LENGTH} characters long",
            param="password",
        )
    return await asyncio.to_thread(_hasher.hash, password)


async def create_admin_user(
    engine: AsyncEngine, name: str, password: str, actor: Actor
) -> AdminUserCreated:
    name = _check_name(name)
    password_hash = await _hashed(password)
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
            await audit.record(conn, actor, "admin_user.create", user.id, after=user)
    except exc.IntegrityError:
        raise Conflict(f"an admin user named {name!r} already exists", param="name") from None
    return user


async def list_admin_users(engine: AsyncEngine) -> list[AdminUserCreated]:
    columns = admin_users.c
    query = select(columns.id, columns.name, columns.created_at).order_by(columns.name)
    async with database.read(engine) as conn:
        rows = (await conn.execute(query)).all()
    return [AdminUserCreated(id=r.id, name=r.name, created_at=r.created_at) for r in rows]


async def set_password(engine: AsyncEngine, name: str, password: str, actor: Actor) -> None:
    """A new password, effective on the user's next request (no session outlives it)."""
    password_hash = await _hashed(password)
    async with database.write(engine) as conn:
        user_id = await _user_id(conn, _check_name(name))
        await conn.execute(
            update(admin_users)
            .where(admin_users.c.id == user_id)
            .values(password_hash=password_hash, updated_at=database.utcnow())
        )
        # That it changed, never what to: the hash is as secret as the password.
        await audit.record(conn, actor, "admin_user.set_password", user_id, details={})


async def delete_admin_user(engine: AsyncEngine, name: str, actor: Actor) -> None:
    async with database.write(engine) as conn:
        user_id = await _user_id(conn, name)
        await conn.execute(delete(admin_users).where(admin_users.c.id == user_id))
        await audit.record(
            conn, actor, "admin_user.delete", user_id, before={"id": user_id, "name": name}
        )


async def _user_id(conn: AsyncConnection, name: str) -> str:
    found = await conn.scalar(select(admin_users.c.id).where(admin_users.c.name == name))
    if found is None:
        raise NotFound(f"no admin user named {name!r}", param="name")
    return found


class PasswordChecker:
    """Admin password checks in the password pool, fair between source addresses."""

    def __init__(self, pool: FairPool) -> None:
        self.pool = pool
        self._typical: float | None = None  # seconds one check takes here

    def _verify(self, password: str, stored: str) -> bool:
        started = time.perf_counter()
        try:
            return _hasher.verify(password, stored)
        finally:
            took = time.perf_counter() - started
            self._typical = took if self._typical is None else 0.8 * self._typical + 0.2 * took

    async def verify(self, engine: AsyncEngine, name: str, password: str, source: str) -> bool:
        name = unicodedata.normalize("NFC", name)
        stored = None
        if len(name) <= 100 and name.isprintable():  # else no such user can exist
            async with database.read(engine) as conn:
                stored = await conn.scalar(
                    select(admin_users.c.password_hash).where(admin_users.c.name == name)
                )
        if stored is not None:
            return await self.pool.run(source, self._verify, password, stored)
        if self._typical is None:  # learn what a check costs, once (hashing in the pool)
            await self.pool.run(source, lambda: self._verify(password, _dummy_hash()))
        else:  # wait in the same queue as long as a check takes, without the CPU
            await self.pool.run(source, time.sleep, self._typical)
        return False
