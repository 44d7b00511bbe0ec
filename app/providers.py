"""Upstream providers: one request to an OpenAI-compatible or Azure OpenAI audio endpoint.

The tenant's key and headers never go upstream; the provider's key never comes back.
"""

from __future__ import annotations

from typing import Any, BinaryIO

import httpx
import msgspec

from app.catalog import Route
from app.errors import EarmarkError
from app.form import Upload


class UpstreamError(EarmarkError):
    """The provider could not be used: 502 (or 504 for a timeout) after every fallback."""

    status_code = 502
    error_type = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status_code = 504


def _url(route: Route, endpoint: str) -> str:
    base = route.provider.base_url.rstrip("/")
    if route.provider.kind == "azure":
        return (
            f"{base}/openai/deployments/{route.upstream_model}/audio/{endpoint}"
            f"?api-version={route.provider.api_version}"
        )
    return f"{base}/audio/{endpoint}"


def _auth_headers(route: Route, api_key: str | None) -> dict[str, str]:
    if api_key is None:
        return {}
    if route.provider.kind == "azure":
        return {"api-key": api_key}
    return {"authorization": f"Bearer {api_key}"}


def create_client() -> httpx.AsyncClient:
    """The process's one upstream client. Transcripts are small: identity encoding avoids
    decompressing on the hot path, and lets a stream be relayed byte for byte."""
    return httpx.AsyncClient(
        headers={"accept-encoding": "identity", "user-agent": "earmark"},
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        timeout=None,  # noqa: S113 - every request sets its provider's own timeout
    )


async def send(
    client: httpx.AsyncClient,
    route: Route,
    api_key: str | None,
    endpoint: str,
    fields: dict[str, list[str]],
    upload: Upload,
) -> httpx.Response:
    """POST the call and return the open (streamed) response; the caller closes it."""
    upload.file.seek(0)
    # A spooled upload still in memory is sent as bytes: giving httpx the file object would
    # make it ask for a fileno and roll the spool over to disk.
    content: bytes | BinaryIO = upload.file.read() if upload.in_memory else upload.file
    provider = route.provider
    request = client.build_request(
        "POST",
        _url(route, endpoint),
        headers=_auth_headers(route, api_key),
        data={**fields, "model": [route.upstream_model]},
        files={"file": (upload.filename, content, upload.content_type)},
        timeout=httpx.Timeout(provider.timeout_seconds, connect=provider.connect_timeout_seconds),
    )
    try:
        return await client.send(request, stream=True)
    except httpx.TimeoutException:
        raise UpstreamTimeout(
            f"{route.provider_name} did not answer within {provider.timeout_seconds:g} s.",
            code="upstream_timeout",
        ) from None
    except httpx.TransportError as error:
        raise UpstreamError(
            f"Could not reach {route.provider_name}: {type(error).__name__}.",
            code="upstream_unreachable",
        ) from None


def should_fall_back(response: httpx.Response) -> bool:
    """A provider's own trouble (5xx) or rate limit: another provider may serve the call."""
    return response.status_code >= 500 or response.status_code == 429


def upstream_error_body(route: Route, status: int, body: bytes) -> dict[str, Any]:
    """The provider's error as an OpenAI envelope whose message names the provider."""
    try:
        error = msgspec.json.decode(body).get("error")
    except (msgspec.DecodeError, AttributeError):
        error = None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return {
            "error": {
                "message": f"{route.provider_name}: {error['message']}",
                "type": error.get("type") or "upstream_error",
                "param": error.get("param"),
                "code": error.get("code"),
            }
        }
    text = body[:200].decode("utf-8", "replace").strip()
    return {
        "error": {
            "message": f"{route.provider_name} returned HTTP {status}"
            + (f": {text}" if text else ""),
            "type": "upstream_error",
            "param": None,
            "code": None,
        }
    }
