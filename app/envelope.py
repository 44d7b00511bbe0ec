"""The one place that turns any error into the OpenAI error envelope.

Every error body, tenant or admin, is ``{"error": {"message", "type", "param", "code"}}``.
Refusals that a retry cannot fix carry ``x-should-retry: false`` so the OpenAI SDKs do not
retry them (they retry 409 and 5xx by default).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from sqlalchemy import exc as sql_errors

from app.errors import (
    BAD_INPUT,
    REFUSAL_REASONS,
    DatabaseUnavailable,
    EarmarkError,
    database_unavailable,
)

logger = logging.getLogger("earmark")

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    402: "budget_exceeded",
    429: "rate_limit_error",
    503: "service_unavailable",
}
_RETRYABLE = frozenset({408, 429})


def error_response(
    status_code: int,
    message: str,
    *,
    error_type: str | None = None,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response[dict[str, Any]]:
    headers = dict(headers or {})
    if 400 <= status_code < 500 and status_code not in _RETRYABLE:
        headers.setdefault("x-should-retry", "false")
    body = {
        "error": {
            "message": message,
            "type": error_type or _TYPE_BY_STATUS.get(status_code, "api_error"),
            "param": param,
            "code": code,
        }
    }
    return Response(body, status_code=status_code, headers=headers)


def handle_earmark_error(_: Request, exc: EarmarkError) -> Response[dict[str, Any]]:
    return error_response(
        exc.status_code,
        exc.message,
        error_type=exc.error_type,
        param=exc.param,
        code=exc.code,
        headers=exc.headers,
    )


_FIELD_IN_MESSAGE = re.compile(r"field `([^`]+)`")
_PATH_IN_MESSAGE = re.compile(r"at `\$\.([^`]+)`")
_NAMED_IN_MESSAGE = re.compile(r"^`([^`]+)`")  # a check that names its field first


def body_param(message: str) -> str | None:
    """The field a msgspec error about a request body names, as a dotted path: "unknown
    field `rpm` - at `$.rate_limits`" is ``rate_limits.rpm``."""
    path = _PATH_IN_MESSAGE.search(message)
    field = _FIELD_IN_MESSAGE.search(message) or _NAMED_IN_MESSAGE.search(message)
    parts = [path.group(1) if path else None, field.group(1) if field else None]
    if parts[0] and parts[1] and parts[0].endswith(parts[1]):
        parts.pop()
    return ".".join(part for part in parts if part) or None


def _validation_message(exc: ValidationException) -> tuple[str, str | None]:
    """The first problem of a Litestar validation error and the field it names, as a dotted
    path: msgspec's "unknown field `rpm`" under key `rate_limits` is ``rate_limits.rpm``."""
    problems = exc.extra if isinstance(exc.extra, list) else []
    if not problems or not isinstance(problems[0], dict):
        return exc.detail, None
    message = str(problems[0].get("message", exc.detail))
    key = problems[0].get("key")
    if key == "data" and message == "'data'":  # Litestar's wording for a missing body
        return "A JSON request body is required.", None
    if not key or key == "data":
        return message, body_param(message)
    field = _FIELD_IN_MESSAGE.search(message)
    if field is None:
        return f"Invalid value for `{key}`: {message}", str(key)
    return message, f"{key}.{field.group(1)}"


def handle_http_exception(request: Request, exc: HTTPException) -> Response[dict[str, Any]]:
    """Litestar's own errors: validation, unknown route, wrong method, malformed JSON."""
    if isinstance(exc, ValidationException):
        message, param = _validation_message(exc)
        return error_response(400, message, param=param, code="invalid_value")
    message = exc.detail
    if message == "Invalid multipart/form-data":
        message = "The request body must be multipart/form-data with the audio in a `file` field."
    elif exc.status_code == 400 and "json" in request.headers.get("content-type", ""):
        message = f"The request body is not valid JSON: {message}"
    return error_response(exc.status_code, message, headers=dict(exc.headers or {}))


def handle_database_error(request: Request, exc: Exception) -> Response[dict[str, Any]]:
    """The database cannot be reached. (The audio call path says itself, before sending
    anything, that nothing was sent; an answer it got is settled from the journal.)"""
    if not database_unavailable(exc):
        return handle_unexpected(request, exc)
    path = request.scope["path"]
    logger.warning("database unavailable on %s %s: %s", request.method, path, exc)
    return handle_earmark_error(request, DatabaseUnavailable())


def handle_unexpected(request: Request, exc: Exception) -> Response[dict[str, Any]]:
    path = request.scope["path"]
    logger.exception("unhandled error on %s %s", request.method, path, exc_info=exc)
    return error_response(
        500, "The gateway failed to process this request.", error_type="api_error"
    )


Handler = Callable[[Request, Any], Response[dict[str, Any]]]


def _counting_refusals(handler: Handler) -> Handler:
    """Count the 4xx answers the gateway itself gives tenants, by reason (a provider's own
    4xx, relayed to the caller, is an upstream error, not a refusal)."""

    def counted(request: Request, exc: Any) -> Response[dict[str, Any]]:
        response = handler(request, exc)
        if 400 <= response.status_code < 500 and request.scope["path"].startswith("/v1/"):
            reason = REFUSAL_REASONS.get(response.status_code, BAD_INPUT)
            request.app.state.metrics.refusals.labels(reason).inc()
        return response

    return counted


def response_for(request: Request, error: Exception) -> Response[dict[str, Any]]:
    """The answer ``EXCEPTION_HANDLERS`` give ``error``, for a path Litestar does not route
    (``routes.audio.lean_uploads``): the handler of its nearest class."""
    for kind in type(error).__mro__:
        if (handler := EXCEPTION_HANDLERS.get(kind)) is not None:
            return handler(request, error)
    raise error


EXCEPTION_HANDLERS = {
    error: _counting_refusals(handler)
    for error, handler in [
        (EarmarkError, handle_earmark_error),
        (HTTPException, handle_http_exception),
        (sql_errors.DBAPIError, handle_database_error),
        (ConnectionError, handle_database_error),
        (Exception, handle_unexpected),
    ]
}
