"""Who may see a console page, what every answer carries, and how pages are rendered.

Every console request passes ``gate`` first: without a live session a page redirects to
sign-in and a form is refused; a form (any method but GET) must carry the session's CSRF
token. Every answer under /console gets the security headers, its own assets only (CSP,
no inline script) and ``no-store``. Errors from the service functions become the error
page with the API's status and message, never a stack trace.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import msgspec
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from litestar import Request, Response
from litestar.datastructures import Cookie
from litestar.enums import MediaType
from litestar.exceptions import HTTPException
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect
from litestar.template import TemplateConfig
from litestar.types import Message, Scope

from app.console import sessions
from app.console.format import FILTERS
from app.errors import EarmarkError
from app.ops.audit import Actor
from app.request_id import request_id

PREFIX = "/console"
COOKIE = "earmark_console"
SIGN_IN_COOKIE = "earmark_console_sign_in"  # the sign-in form's own CSRF token
TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
_SAFE_METHODS = ("GET", "HEAD")

CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
_NO_STORE = [(b"cache-control", b"no-store")]


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    """Litestar's Jinja2 engine over the console's templates: autoescaped, the console's
    filters, and a missing variable an error rather than an empty string."""
    templates = Environment(
        loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined
    )
    templates.filters.update(FILTERS)
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(templates))


async def console_headers(message: Message, scope: Scope) -> None:
    """The console's security headers on every answer under /console (errors, redirects
    and unknown paths included); pages, which may show a secret, are never cached."""
    if message["type"] != "http.response.start" or not scope["path"].startswith(PREFIX):
        return
    extra = _HEADERS if scope["path"].startswith(f"{PREFIX}/static/") else _HEADERS + _NO_STORE
    message["headers"] = [*message.get("headers", []), *extra]


# What a redirect after a change says on the page it lands on (``?done=``): fixed text,
# so no address can make a console page say something else.
NOTICES = {
    "revoked": "The key is revoked: its next request is refused, on every process.",
    "created": "Created.",
    "saved": "Saved.",
    "deleted": "Deleted.",
    "reset": "The budget's period starts again from nothing spent.",
    "topped-up": "Topped up.",
}


def render(request: Request, template: str, *, status: int = 200, **context: Any) -> Response:
    session: sessions.Session | None = request.state.get("console")
    html = request.app.template_engine.get_template(template).render(
        admin=session.admin if session else None,
        csrf=session.csrf if session else None,
        path=request.url.path,
        notice=NOTICES.get(request.query_params.get("done", "")),
        **context,
    )
    return Response(html, media_type=MediaType.HTML, status_code=status)


def error_page(request: Request, status: int, message: str, **headers: str) -> Response:
    response = render(request, "error.html", status=status, status_code=status, message=message)
    response.headers.update(headers)
    return response


def actor(request: Request) -> Actor:
    """The signed-in admin, as the audit trail records it."""
    session: sessions.Session = request.state.console
    source = request.client.host if request.client else None
    return Actor(session.admin, request_id=request_id(request.scope), source=source)


def session_cookie(request: Request, token: str | None) -> Cookie:
    """The session cookie (``None``: the one that ends it)."""
    return _cookie(request, COOKIE, token)


def _cookie(request: Request, name: str, value: str | None) -> Cookie:
    """Over HTTPS a ``__Host-`` cookie: only this host may set it (never a sibling
    subdomain, so no one can plant a session or a sign-in token), which takes path /."""
    secure = request.url.scheme == "https"
    return Cookie(
        key=f"__Host-{name}" if secure else name,
        value=value or "",
        path="/" if secure else PREFIX,
        httponly=True,
        samesite="strict",
        secure=secure,
        max_age=None if value else 0,
    )


def cookie(request: Request, name: str) -> str | None:
    """The value of the console cookie ``name`` as ``_cookie`` named it for this scheme."""
    return request.cookies.get(f"__Host-{name}" if request.url.scheme == "https" else name)


def same_token(sent: object, expected: str | None) -> bool:
    """Whether a form sent the token it was given, in constant time. As bytes: a string
    comparison refuses non-ASCII text with a TypeError, and anyone can send that."""
    if not (expected and isinstance(sent, str)):
        return False
    raw = sent.encode(errors="surrogatepass"), expected.encode(errors="surrogatepass")
    return hmac.compare_digest(*raw)


def sign_in_cookie(request: Request, token: str) -> Cookie:
    return _cookie(request, SIGN_IN_COOKIE, token)


async def gate(request: Request) -> Response | None:
    """Before every console handler: a live session, and on a form its CSRF token."""
    if request.route_handler.opt.get("public"):
        return None
    state = request.app.state
    session = await sessions.find(
        state.engine,
        cookie(request, COOKIE),
        state.settings.admin_token,
        state.settings.console,
    )
    if session is None:
        if request.method in _SAFE_METHODS:
            wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return Redirect(f"{PREFIX}/sign-in?next={quote(wanted, safe='')}")
        return error_page(request, 401, "Your session has ended. Sign in again.")
    request.state.console = session
    if request.method not in _SAFE_METHODS:
        sent = (await request.form()).get("csrf")
        if not same_token(sent, session.csrf):
            return error_page(
                request, 403, "This form is out of date or was not sent from the console."
            )
    return None


def next_page(request: Request, cursor: str | None) -> str | None:
    """This page's address with the next page's cursor (None: this is the last page)."""
    if cursor is None:
        return None
    query = {name: value for name, value in request.query_params.items() if name != "cursor"}
    return f"{request.url.path}?{urlencode({**query, 'cursor': cursor})}"


def _earmark_error(request: Request, error: EarmarkError) -> Response:
    return error_page(request, error.status_code, error.message, **error.headers)


def http_error(request: Request, error: HTTPException) -> Response:
    status = error.status_code
    message = "No such page." if status == 404 else "This request could not be handled."
    if status == 400:
        message = f"Some of what was sent is not valid: {error.detail}"
    return error_page(request, status, message)


def _invalid(request: Request, error: msgspec.ValidationError) -> Response:
    return error_page(request, 400, f"Some of what was sent is not valid: {error}")


EXCEPTION_HANDLERS: dict[type[Exception], Any] = {
    EarmarkError: _earmark_error,
    HTTPException: http_error,
    msgspec.ValidationError: _invalid,
}
