"""A fake OpenAI-compatible speech-to-text provider, served on loopback for the tests.

It answers like OpenAI (and like Groq and Azure OpenAI where they differ): every response
format, duration and token usage, SSE streams for gpt-4o models, OpenAI error bodies. It
records what it was sent and what it billed (the seconds it decoded, for every request it
did the work of), and a test can script its next answers: a status, a delay (an answer
after the gateway's timeout is still billed), no usage, a reset of the connection during
the upload (not billed) or after doing the work (billed), a stream broken off after some
events (billed), an answer or an event that does not end (billed).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import math
import random
from collections import deque
from fractions import Fraction
from typing import Any

import av
import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody
from litestar.response import Stream
from multipart import MultipartSegment, ParserError, PushMultipartParser, parse_options_header

API_KEY = "sk-fake-provider-key"
TEXT = "The quick brown fox jumps over the lazy dog. Metering every second of audio."
WHISPER = {"whisper-1", "whisper-large-v3", "whisper-large-v3-turbo"}
GPT4O = {"gpt-4o-transcribe", "gpt-4o-mini-transcribe", "gpt-4o-transcribe-diarize"}
GROQ = {"whisper-large-v3", "whisper-large-v3-turbo"}  # Groq reports no `usage`
AUDIO_TOKENS_PER_SECOND = 8


class Script:
    """What the fake has seen, and what it will do next."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.next: deque[dict[str, Any]] = deque()
        self.latency = 0.0
        # Unscripted requests draw a behaviour: [(probability, behaviour), …] (bench/chaos).
        self.chaos: list[tuple[float, dict[str, Any]]] = []
        self.random = random.Random(0)

    def reset(self) -> None:
        self.requests.clear()
        self.next.clear()
        self.latency = 0.0
        self.chaos = []

    def behaviour(self) -> dict[str, Any]:
        if self.next:
            return self.next.popleft()
        draw = self.random.random()
        for probability, behaviour in self.chaos:
            if draw < probability:
                return behaviour
            draw -= probability
        return {}


def _error(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> Response:
    body = {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    }
    return Response(body, status_code=status)


def _duration(data: bytes) -> float:
    """What it decodes, as a provider bills: not what the file's header claims."""
    with av.open(io.BytesIO(data), metadata_errors="replace") as container:
        stream = container.streams.audio[0]
        seconds = Fraction(0)  # exact: whole seconds are rounded up from it
        for packet in container.demux(stream):
            try:
                seconds += sum(Fraction(f.samples, f.sample_rate) for f in packet.decode())
            except av.FFmpegError:
                continue  # as ffmpeg does: skip what cannot be decoded
        return float(seconds) if seconds.denominator > 1 else int(seconds)


def _stamp(seconds: float, separator: str) -> str:
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def _token_usage(duration: float, prompt: str) -> dict[str, Any]:
    audio = math.ceil(duration * AUDIO_TOKENS_PER_SECOND)
    text = len(prompt.split())
    output = len(TEXT.split()) + 2
    return {
        "type": "tokens",
        "input_tokens": audio + text,
        "input_token_details": {"text_tokens": text, "audio_tokens": audio},
        "output_tokens": output,
        "total_tokens": audio + text + output,
    }


def _answer(
    model: str,
    fmt: str,
    duration: float,
    fields: dict[str, list[str]],
    usage: bool,
    report_seconds: int | None = None,
) -> Response:
    prompt = fields.get("prompt", [""])[0]
    if model in WHISPER:
        meter = {"type": "duration", "seconds": report_seconds or math.ceil(duration)}
    else:
        meter = _token_usage(duration, prompt)
    extra = {"x_groq": {"id": "req_fake"}} if model in GROQ else {}
    with_usage = {"usage": meter} if usage and model not in GROQ else {}
    segment = {"id": 0, "seek": 0, "start": 0.0, "end": round(duration, 2), "text": f" {TEXT}"}
    if fmt == "json":
        return Response({"text": TEXT, **with_usage, **extra})
    if fmt == "text":
        return Response(f"{TEXT}\n", media_type="text/plain; charset=utf-8")
    if fmt == "verbose_json":
        body: dict[str, Any] = {
            "task": "transcribe",
            "language": "english",
            "duration": round(duration, 2),
            "text": TEXT,
            "segments": [segment],
        }
        if "word" in fields.get("timestamp_granularities[]", []):
            step = duration / len(TEXT.split())
            body["words"] = [
                {"word": word, "start": round(i * step, 2), "end": round((i + 1) * step, 2)}
                for i, word in enumerate(TEXT.split())
            ]
        return Response({**body, **with_usage, **extra})
    if fmt == "diarized_json":
        seg = {
            "type": "transcript.text.segment",
            "id": "seg_0",
            "start": 0.0,
            "end": round(duration, 2),
            "text": TEXT,
            "speaker": "A",
        }
        return Response({"text": TEXT, "segments": [seg], **with_usage})
    start, end = _stamp(0, ","), _stamp(duration, ",")
    if fmt == "srt":
        return Response(f"1\n{start} --> {end}\n{TEXT}\n\n", media_type="text/plain; charset=utf-8")
    start, end = _stamp(0, "."), _stamp(duration, ".")
    return Response(
        f"WEBVTT\n\n{start} --> {end}\n{TEXT}\n\n", media_type="text/plain; charset=utf-8"
    )


def _reset(request: Request) -> None:
    """Drop the connection without an answer (see tests.servers.ResettableProtocol)."""
    request.scope["extensions"]["earmark.transport"].abort()  # type: ignore[typeddict-item]


async def _events(
    duration: float, prompt: str, usage: bool, latency: float, request: Request, cut: int | None
):
    for n, word in enumerate(TEXT.split(" ")):
        if cut is not None and n == cut:
            _reset(request)
            return
        yield f'data: {{"type":"transcript.text.delta","delta":"{word} "}}\n\n'.encode()
        await asyncio.sleep(latency)
    done: dict[str, Any] = {"type": "transcript.text.done", "text": TEXT}
    if usage:
        done["usage"] = _token_usage(duration, prompt)
    yield f"data: {json.dumps(done)}\n\n".encode()


def _runaway(size: int, how: str | None, status: int = 200) -> Response | Stream:
    """``size`` bytes of answer: whole with its length, chunked (``how="chunked"``), or as
    one server-sent event that never ends (``how="event"``)."""
    if how == "event":
        head = b'data: {"type":"transcript.text.delta","delta":"'
        return Stream(_pieces(head, size), media_type="text/event-stream", status_code=status)
    head = b'{"text":"'
    if how == "chunked":
        return Stream(_pieces(head, size), media_type="application/json", status_code=status)
    body = head + b"a" * (size - len(head) - 2) + b'"}'
    return Response(body, media_type="application/json", status_code=status)


async def _pieces(head: bytes, size: int):
    yield head
    for _ in range((size - len(head)) // (1 << 20) + 1):
        yield b"a" * (1 << 20)


class Upload(msgspec.Struct):
    filename: str | None
    content_type: str | None
    content: bytes


def _parse_form(body: bytes, content_type: str) -> tuple[dict[str, list[str]], Upload | None]:
    """The form, parsed in memory: a provider's uploads are small here, and nothing is
    spooled to a file that a sender dying mid-upload could leave open."""
    _, options = parse_options_header(content_type)
    fields: dict[str, list[str]] = {}
    upload = None
    with PushMultipartParser(options["boundary"]) as parser:
        segment, chunks = None, []
        for event in parser.parse(body):
            if isinstance(event, MultipartSegment):
                segment, chunks = event, []
            elif event:
                chunks.append(event)
            elif segment is not None:
                data = b"".join(chunks)
                if segment.filename is not None:
                    upload = Upload(segment.filename, segment.content_type, data)
                else:
                    fields.setdefault(segment.name or "", []).append(data.decode())
    return fields, upload


async def _serve(request: Request, endpoint: str, model_path: str | None) -> Response:
    script: Script = request.app.state.script
    behaviour = script.behaviour()
    if behaviour.get("reset") == "during_upload":  # before reading the body: nothing billed
        script.requests.append(
            {"path": request.url.path, "headers": dict(request.headers), "reset": "during_upload"}
        )
        _reset(request)
        return Response(b"", status_code=500)  # never sent: the connection is gone
    if behaviour.get("early"):  # refused on the headers, the upload left unread: billed nothing
        script.requests.append({"path": request.url.path, "refused": behaviour["status"]})
        return _error(behaviour["status"], "Rate limit reached", code="rate_limit_exceeded")
    # A provider that takes the connection and does not read: the upload stalls.
    await asyncio.sleep(behaviour.get("stall_upload", 0))
    try:
        fields, upload = _parse_form(await request.body(), request.headers.get("content-type", ""))
    except (KeyError, ParserError):
        return _error(400, "Could not parse multipart form data.")
    content = upload.content if upload else b""
    record = {
        "path": request.url.path,
        "query": dict(request.query_params),
        "headers": dict(request.headers),
        "fields": {k: [str(x) for x in v] for k, v in fields.items()},
        "file": {
            "filename": upload.filename if upload else None,
            "content_type": upload.content_type if upload else None,
            "size": len(content),
            "sha256": hashlib.sha256(content).hexdigest(),
        },
    }
    script.requests.append(record)
    await asyncio.sleep(behaviour.get("delay", script.latency))
    if "status" in behaviour:
        if "answer_bytes" in behaviour:  # a refusal whose body does not end soon
            return _runaway(behaviour["answer_bytes"], behaviour.get("as"), behaviour["status"])
        return Response(
            behaviour.get(
                "body",
                {
                    "error": {
                        "message": "scripted failure",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                },
            ),
            status_code=behaviour["status"],
        )

    bearer = request.headers.get("authorization", "")
    if (model_path is None and bearer != f"Bearer {API_KEY}") or (
        model_path is not None and request.headers.get("api-key") != API_KEY
    ):
        return _error(401, "Incorrect API key provided.", code="invalid_api_key")
    if not content:
        return _error(400, "Missing file.", param="file")
    model = model_path or fields.get("model", [""])[0]
    if model not in WHISPER | GPT4O:
        return _error(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            code="model_not_found",
        )
    if endpoint == "translations" and model not in WHISPER:
        return _error(400, f"Model {model} does not support translations.", param="model")
    fmt = fields.get("response_format", ["json"])[0]
    allowed = {"json", "text"} | ({"diarized_json"} if model.endswith("diarize") else set())
    if model in GPT4O and fmt not in allowed:
        return _error(
            400,
            f"response_format '{fmt}' is not compatible with model '{model}'.",
            param="response_format",
            code="unsupported_value",
        )
    try:
        duration = _duration(content)
    except (av.FFmpegError, IndexError, ZeroDivisionError):
        return _error(
            400, "Audio file might be corrupted or unsupported.", param="file", code="invalid_value"
        )
    usage = not behaviour.get("no_usage", False)
    record["billed_seconds"] = duration  # it did the work, whatever happens to the answer
    if "answer_bytes" in behaviour:  # a runaway answer: a JSON text that never ends soon
        return _runaway(behaviour["answer_bytes"], behaviour.get("as"))
    if fields.get("stream", ["false"])[0] == "true" and model in GPT4O:
        prompt = fields.get("prompt", [""])[0]
        events = _events(
            duration, prompt, usage, behaviour.get("chunk_delay", 0.0), request,
            behaviour.get("break_stream_after"),
        )  # fmt: skip
        return Stream(events, media_type="text/event-stream")
    if behaviour.get("reset") == "after_work":
        _reset(request)
    return _answer(model, fmt, duration, fields, usage, behaviour.get("report_seconds"))


@post("/v1/audio/{endpoint:str}", request_max_body_size=None, status_code=200)
async def openai_audio(request: Request, endpoint: FromPath[str]) -> Response:
    return await _serve(request, endpoint, None)


@post(
    "/openai/deployments/{deployment:str}/audio/{endpoint:str}",
    request_max_body_size=None,
    status_code=200,
)
async def azure_audio(
    request: Request, deployment: FromPath[str], endpoint: FromPath[str]
) -> Response:
    return await _serve(request, endpoint, deployment)


@post("/_script", status_code=200)
async def script_next(request: Request, data: JSONBody[list[dict[str, Any]]]) -> None:
    request.app.state.script.next.extend(data)


@post("/_chaos", status_code=200)
async def chaos(request: Request, data: JSONBody[list[tuple[float, dict[str, Any]]]]) -> None:
    request.app.state.script.chaos = [(p, b) for p, b in data]


@get("/_requests")
async def seen(request: Request) -> list[dict[str, Any]]:
    return request.app.state.script.requests


def create_fake_provider(script: Script) -> Litestar:
    return Litestar(
        [openai_audio, azure_audio, script_next, chaos, seen],
        state=State({"script": script}),
        openapi_config=None,
    )
