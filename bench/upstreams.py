"""The two servers the benchmark measures Earmark against, as plain ASGI apps.

- ``provider``: an OpenAI-compatible endpoint that reads the whole upload and answers a
  canned transcription with usage, as fast as uvicorn allows (the provider's own time).
- ``passthrough``: the baseline named in PRODUCT.md: uvicorn + one httpx client, no
  parsing, no auth, no database, the body buffered then re-sent to the provider.

Run one with ``python -m bench.upstreams provider|passthrough PORT [UPSTREAM_URL]``.
"""

from __future__ import annotations

import sys

import httpx
import uvicorn

ANSWER = b'{"text":"The quick brown fox.","usage":{"type":"duration","seconds":3}}'
JSON_HEADERS = [(b"content-type", b"application/json")]


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def provider(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    await _read_body(receive)
    await send({"type": "http.response.start", "status": 200, "headers": JSON_HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})


def passthrough_app(upstream: str):
    client = httpx.AsyncClient(base_url=upstream, timeout=60)

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        content_type = dict(scope["headers"]).get(b"content-type", b"").decode()
        answer = await client.post(
            scope["path"], content=body, headers={"content-type": content_type}
        )
        headers = [(b"content-type", answer.headers["content-type"].encode())]
        await send(
            {"type": "http.response.start", "status": answer.status_code, "headers": headers}
        )
        await send({"type": "http.response.body", "body": answer.content})

    return app


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    app = provider if kind == "provider" else passthrough_app(sys.argv[3])
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
