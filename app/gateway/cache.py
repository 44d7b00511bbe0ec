"""The exact-match transcription cache, in the database so every replica shares it.

A call may be answered from the cache when its model has ``cache`` configured, its key
has not opted out, and it does not say ``x-bf-cache: no-cache``. The entry is found by a
digest of the audio bytes and the parameters that change the answer (model, operation,
language, prompt, response format, temperature, timestamp granularities, include), kept
for the model's TTL, and bounded in count per model and in size per entry. A fresh answer
is stored unless the call says ``x-bf-cache: no-store``; only the requested model's own
answers are stored (a fallback's answer is another model's).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec
from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from app.billing.metering import Usage
from app.catalog import ModelRoute
from app.config import CacheConfig
from app.gateway.form import Upload
from app.runtime.executors import FairPool
from app.storage import database
from app.storage.models import transcription_cache

HEADER = "x-bf-cache"
# Fields whose value changes the answer; others (stream, user, …) do not.
SEMANTIC_FIELDS = (
    "language", "prompt", "response_format", "temperature", "timestamp_granularities",
    "timestamp_granularities[]", "include", "include[]", "chunking_strategy",
)  # fmt: skip
_UNORDERED = frozenset({"timestamp_granularities", "timestamp_granularities[]", "include[]"})
_CHUNK = 1 << 20


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    content_type: str
    body: bytes
    usage: Usage


@dataclass(frozen=True, slots=True)
class Lookup:
    """One call's place in the cache: its key, and whether it may read and fill it."""

    key: str
    config: CacheConfig
    read: bool
    write: bool


def _directives(header: str | None) -> tuple[bool, bool]:
    tokens = {token.strip().lower() for token in (header or "").split(",")}
    return "no-cache" not in tokens, "no-store" not in tokens


def _audio_digest(upload: Upload) -> str:
    digest = hashlib.sha256()
    upload.file.seek(0)
    while chunk := upload.file.read(_CHUNK):
        digest.update(chunk)
    upload.file.seek(0)
    return digest.hexdigest()


async def audio_sha256(upload: Upload, tenant_id: str, files: FairPool) -> str:
    """The upload's SHA-256 (hex): inline if it is in memory, else in the file pool."""
    if upload.in_memory:
        return _audio_digest(upload)
    return await files.run(tenant_id, _audio_digest, upload)


async def prepare(
    route: ModelRoute,
    operation: str,
    fields: dict[str, list[str]],
    upload: Upload,
    *,
    tenant_id: str,
    key_allows: bool,
    header: str | None,
    files: FairPool,
    audio: str | None = None,
) -> Lookup | None:
    """The call's cache key, or None when the cache does not apply to it. Entries are the
    tenant's own unless the model's cache is ``shared_across_tenants``: otherwise another
    tenant could read a transcript, or learn that a recording was sent, by its bytes."""
    read, write = _directives(header)
    if route.cache is None or not key_allows or not (read or write):
        return None
    audio = audio or await audio_sha256(upload, tenant_id, files)
    params = {
        name: sorted(fields[name]) if name in _UNORDERED else fields[name]
        for name in SEMANTIC_FIELDS
        if name in fields
    }
    params.setdefault("response_format", ["json"])
    scope = "*" if route.cache.shared_across_tenants else tenant_id
    material = msgspec.json.encode([scope, route.name, operation, audio, params], order="sorted")
    return Lookup(
        key=hashlib.sha256(material).hexdigest(), config=route.cache, read=read, write=write
    )


async def find(engine: AsyncEngine, key: str, now: datetime | None = None) -> Entry | None:
    query = select(transcription_cache).where(
        transcription_cache.c.key == key,
        transcription_cache.c.expires_at > (now or database.utcnow()),
    )
    async with database.read(engine) as conn:
        row = (await conn.execute(query)).first()
    if row is None:
        return None
    return Entry(
        key=row.key,
        content_type=row.content_type,
        body=row.body,
        usage=msgspec.convert(row.usage, Usage),
    )


async def store(
    engine: AsyncEngine,
    lookup: Lookup,
    route: ModelRoute,
    content_type: str,
    body: bytes,
    usage: Usage,
    now: datetime | None = None,
) -> bool:
    """Keep an answer (replacing an expired one), then drop the model's oldest entries
    beyond its bound. False when the answer is too large to keep."""
    if len(body) > lookup.config.max_entry_bytes:
        return False
    now = now or database.utcnow()
    values = {
        "key": lookup.key,
        "route": route.name,
        "content_type": content_type,
        "body": body,
        "usage": msgspec.to_builtins(usage),
        "created_at": now,
        "expires_at": now + timedelta(seconds=lookup.config.ttl_seconds),
    }
    async with database.write(engine) as conn:
        insert = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert
        statement = insert(transcription_cache).values(**values)
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=[transcription_cache.c.key],
                set_={name: statement.excluded[name] for name in values if name != "key"},
            )
        )
        keep = (
            select(transcription_cache.c.key)
            .where(transcription_cache.c.route == route.name)
            .order_by(transcription_cache.c.created_at.desc())
            .limit(lookup.config.max_entries)
        )
        await conn.execute(
            delete(transcription_cache).where(
                transcription_cache.c.route == route.name,
                transcription_cache.c.key.not_in(keep.scalar_subquery()),
            )
        )
    return True


async def purge_expired(engine: AsyncEngine, now: datetime | None = None) -> int:
    return await database.delete_expired(engine, transcription_cache, now)
