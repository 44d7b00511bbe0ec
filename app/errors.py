"""The errors services raise, each with the HTTP status and OpenAI error type it answers
as (``envelope`` turns them into the OpenAI error envelope), and which database errors mean
the database cannot be reached. Nothing here needs the web framework, so the CLI and the
services load without it.
"""

from __future__ import annotations

from sqlalchemy import exc as sql_errors

# Why the gateway refused a tenant's request, for metrics; any other 4xx is bad input.
REFUSAL_REASONS = {401: "auth", 402: "budget", 403: "forbidden", 429: "rate_limit"}
BAD_INPUT = "bad_input"


class EarmarkError(Exception):
    status_code = 400
    error_type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


class InvalidRequest(EarmarkError):
    pass


class AuthenticationFailed(EarmarkError):
    status_code = 401

    def __init__(
        self, message: str, *, code: str = "invalid_api_key", headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message, code=code, headers=headers)


class PermissionDenied(EarmarkError):
    status_code = 403
    error_type = "permission_error"


class NotFound(EarmarkError):
    status_code = 404
    error_type = "not_found_error"


class Conflict(EarmarkError):
    status_code = 409
    error_type = "conflict_error"


class ServiceUnavailable(EarmarkError):
    status_code = 503
    error_type = "service_unavailable"


class Busy(ServiceUnavailable):
    """A bounded resource of this process is full: retry in a second."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="busy", headers={"retry-after": "1"})


DATABASE_ERRORS = (sql_errors.DBAPIError, ConnectionError)


def database_unavailable(exc: BaseException) -> bool:
    """Whether an error means the database cannot be reached now (not a bad statement)."""
    if isinstance(exc, ConnectionError):
        return True
    if not isinstance(exc, sql_errors.DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(
        exc, sql_errors.OperationalError | sql_errors.InterfaceError
    ):
        return True
    # PostgreSQL: connection exception, insufficient resources, operator intervention.
    sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None) or ""
    return sqlstate[:2] in ("08", "53", "57")


class DatabaseUnavailable(ServiceUnavailable):
    def __init__(
        self, message: str = "The gateway's database is unavailable. Retry shortly."
    ) -> None:
        super().__init__(message, code="database_unavailable", headers={"retry-after": "1"})
