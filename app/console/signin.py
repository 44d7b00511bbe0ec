"""Signing in to the console and out of it.

The sign-in form has its own CSRF token (a cookie and a field that must match), so no
other site can sign a browser in as someone else. Passwords are checked as the admin API
checks them (``auth.admin_identity``): throttled per source and per user name before any
argon2 hash. A tenant key never opens the console.
"""

from __future__ import annotations

import secrets
from urllib.parse import unquote

from litestar import Request, Response, get, post
from litestar.params import FromQuery
from litestar.response import Redirect

from app.access import key_format
from app.access.auth import admin_identity
from app.access.throttle import TooManyAttempts
from app.console import sessions
from app.console.forms import text
from app.console.gate import (
    PREFIX,
    SIGN_IN_COOKIE,
    cookie,
    error_page,
    render,
    same_token,
    session_cookie,
    sign_in_cookie,
)

_PUBLIC = {"public": True}


def _local(target: str | None) -> str:
    """Where to go after signing in: a console page, never another site, nor another
    path that dot segments would make of a console one."""
    if not target or "\\" in target or not target.isprintable():
        return PREFIX
    path = unquote(target.partition("?")[0])
    if any(segment in (".", "..") for segment in path.split("/")):
        return PREFIX
    return target if target == PREFIX or target.startswith((f"{PREFIX}/", f"{PREFIX}?")) else PREFIX


def _sign_in_form(
    request: Request, target: str, *, status: int = 200, error: str | None = None
) -> Response:
    token = secrets.token_urlsafe(24)
    response = render(
        request, "sign_in.html", status=status, next=target, sign_in_token=token, error=error
    )
    response.set_cookie(sign_in_cookie(request, token))
    return response


@get("/sign-in", opt=_PUBLIC)
async def sign_in_page(request: Request, next: FromQuery[str | None] = None) -> Response:
    return _sign_in_form(request, _local(next))


@post("/sign-in", opt=_PUBLIC, status_code=303)
async def sign_in(request: Request) -> Response:
    fields = await request.form()
    sent, expected = fields.get("sign_in_token"), cookie(request, SIGN_IN_COOKIE)
    if not same_token(sent, expected):
        return error_page(request, 403, "This sign-in form is out of date: reload it.")
    target = _local(text(fields, "next"))
    user = text(fields, "user")
    secret = fields.get("password")
    secret = secret if isinstance(secret, str) else ""
    if secret.startswith(key_format.PREFIX):
        error = "Tenant keys cannot open the console: sign in as an admin."
        return _sign_in_form(request, target, status=403, error=error)
    state = request.app.state
    source = request.client.host if request.client else "unknown"
    try:
        admin = await admin_identity(state, source, user, secret)
    except TooManyAttempts as refusal:
        response = _sign_in_form(request, target, status=429, error=refusal.message)
        response.headers.update(refusal.headers)
        return response
    opened = admin and await sessions.open_session(
        state.engine, admin, state.settings.admin_token, state.settings.console
    )
    if not opened:
        error = "Wrong user name or password." if user else "Wrong admin token."
        return _sign_in_form(request, target, status=401, error=error)
    response = Redirect(target, status_code=303)
    response.set_cookie(session_cookie(request, opened[0]))
    response.set_cookie(sign_in_cookie(request, ""))
    return response


@post("/sign-out", status_code=303)
async def sign_out(request: Request) -> Response:
    await sessions.close(request.app.state.engine, request.state.console.id)
    response = Redirect(f"{PREFIX}/sign-in", status_code=303)
    response.set_cookie(session_cookie(request, None))
    return response


ROUTES = [sign_in_page, sign_in, sign_out]
