"""Failed admin sign-ins, throttled per source address and per user name before any hash.

Every password check is an argon2 hash (64 MiB, tens of milliseconds of CPU), so an
attacker who can make the gateway hash at will can pin its cores. After
``MAX_FAILURES`` failures within ``WINDOW_SECONDS`` from one address, or for one user
name, further attempts are refused with 429 and ``Retry-After`` until the oldest failure
leaves the window, without hashing; an attempt counts as a failure from the moment it
starts, so simultaneous attempts cannot all slip under the count. The tables are bounded
(the least recently seen entries go first), so a flood of names or addresses cannot grow
memory; they live in each process, so ``--workers N`` allows N times the attempts.
"""

from __future__ import annotations

import math
import time
import unicodedata
from collections import OrderedDict, deque

from app.errors import EarmarkError

MAX_FAILURES = 10
WINDOW_SECONDS = 60.0
MAX_ENTRIES = 10_000


class TooManyAttempts(EarmarkError):
    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"Too many failed sign-ins; retry after {retry_after} s.",
            code="too_many_attempts",
            headers={"retry-after": str(retry_after)},
        )


class SignInThrottle:
    def __init__(
        self,
        max_failures: int = MAX_FAILURES,
        window_seconds: float = WINDOW_SECONDS,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self.max_failures = max_failures
        self.window = window_seconds
        self.max_entries = max_entries
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        failures = self._failures.get(key)
        if failures is None:
            return None
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return None
        return failures

    def retry_after(self, source: str, user: str | None, now: float | None = None) -> int | None:
        """Seconds to wait if this source or user name is throttled, else None."""
        now = time.monotonic() if now is None else now
        waits = []
        for key in self._keys(source, user):
            failures = self._recent(key, now)
            if failures is not None and len(failures) >= self.max_failures:
                waits.append(failures[0] + self.window - now)
        return max(1, math.ceil(max(waits))) if waits else None

    def failed(self, source: str, user: str | None, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for key in self._keys(source, user):
            failures = self._recent(key, now)
            if failures is None:
                failures = self._failures[key] = deque(maxlen=self.max_failures)
            failures.append(now)
            self._failures.move_to_end(key)
        while len(self._failures) > self.max_entries:
            self._failures.popitem(last=False)

    def attempt(self, source: str, user: str | None) -> None:
        """Count an attempt as failed before it is checked (``TooManyAttempts`` if it may
        not be), so that attempts racing each other cannot all pass the count."""
        now = time.monotonic()
        if (wait := self.retry_after(source, user, now)) is not None:
            raise TooManyAttempts(wait)
        self.failed(source, user, now)

    def succeeded(self, source: str, user: str | None) -> None:
        """The attempt was right: it was not a failure of its address, and it clears the
        user's failures."""
        failures = self._failures.get(f"source:{source}")
        if failures:
            failures.pop()
        if user is not None:
            self._failures.pop(self._user_key(user), None)

    @staticmethod
    def _user_key(user: str) -> str:
        # One entry for every spelling of a name: NFC ("\u212aate" is "Kate"), any case.
        return "user:" + unicodedata.normalize("NFC", user[:100]).casefold()

    def _keys(self, source: str, user: str | None) -> list[str]:
        return [f"source:{source}"] + ([self._user_key(user)] if user is not None else [])
