"""Settlements the database could not take, kept on this machine until it can.

When the ledger cannot be written after a provider answered, the tenant still gets the
answer: the settlement is first appended to this process's journal (one JSON line,
fsynced), so a crash after the answer loses nothing either. Every process replays every
journal in the directory when it starts and before each sweep. A line is applied by the
same conditional update a live settle uses, so a line applied twice changes nothing; a
journal whose lines are all applied is deleted, once its process is gone or it is ours.
A line that cannot be read (one its process was killed while writing, say) is set
aside in ``unreadable-settlements.jsonl`` for an operator when its file is deleted,
never left to stop the replay.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from pathlib import Path

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from app.billing import ledger
from app.errors import DATABASE_ERRORS, database_unavailable
from app.runtime.executors import FairPool

logger = logging.getLogger("earmark")
_PREFIX = "settlements-"
_UNREADABLE = "unreadable-settlements.jsonl"


class Entry(msgspec.Struct, kw_only=True):
    call_id: str
    settlement: ledger.Settlement


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _append_durably(path: Path, line: bytes) -> None:
    """Append ``line`` to ``path`` and wait until it is on disk, with the file's name too
    when this made the file (a power loss keeps both)."""
    created = not path.exists()
    with path.open("ab") as out:
        out.write(line)
        out.flush()
        os.fsync(out.fileno())
    if created:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


class Journal:
    def __init__(self, directory: Path, files: FairPool) -> None:
        self.directory = directory
        self.files = files
        # Named for this process (its pid, for the liveness check) and this run of it: a
        # later process given the same pid never appends to a line this one left half-written.
        self.path = directory / f"{_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.jsonl"
        self._lock = asyncio.Lock()  # an append and our own replay never interleave
        self.pending = 0  # lines of ours not yet applied

    def _write(self, line: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        _append_durably(self.path, line)

    def _set_aside(self, path: Path, line: bytes) -> None:
        _append_durably(self.directory / _UNREADABLE, line)
        logger.error(
            "a settlement in %s cannot be read; it is kept in %s for review",
            path.name,
            _UNREADABLE,
        )

    async def append(self, call_id: str, settlement: ledger.Settlement) -> None:
        """Keep a settlement durably until ``replay`` applies it."""
        line = msgspec.json.encode(Entry(call_id=call_id, settlement=settlement)) + b"\n"
        async with self._lock:
            await self.files.run("journal", self._write, line)
            self.pending += 1

    async def replay(self, engine: AsyncEngine) -> int:
        """Apply every complete line of every journal here; the count applied now. Stops
        quietly while the database is still away."""
        applied = 0
        async with self._lock:
            for path in sorted(self.directory.glob(f"{_PREFIX}*.jsonl")):
                try:
                    applied += await self._replay_file(engine, path)
                except DATABASE_ERRORS as error:
                    if not database_unavailable(error):
                        raise
                    break
        if applied:
            logger.warning("applied %d settlements kept while the database was away", applied)
        return applied

    async def _replay_file(self, engine: AsyncEngine, path: Path) -> int:
        owner = int(path.stem.removeprefix(_PREFIX).split("-")[0])
        ours = path == self.path
        done = ours or not _alive(owner)  # nobody will write to it again: it goes after this
        data = await self.files.run("journal", path.read_bytes)
        lines = data.splitlines(keepends=True)
        torn = lines.pop() if lines and not lines[-1].endswith(b"\n") else None
        applied = 0
        for line in lines:
            try:
                entry = msgspec.json.decode(line, type=Entry)
            except msgspec.DecodeError:
                if done:  # once, as the file goes, not at every round while it stays
                    await self.files.run("journal", self._set_aside, path, line)
                continue
            if await ledger.apply_settlement(engine, entry.call_id, entry.settlement):
                applied += 1
        if done:
            if torn is not None:  # its writer died mid-line
                await self.files.run("journal", self._set_aside, path, torn + b"\n")
            await self.files.run("journal", path.unlink, True)
            if ours:
                self.pending = 0
        return applied
