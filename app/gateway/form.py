"""The audio call's multipart form, read from the request stream under limits.

Every byte is the tenant's, so the parser is bounded: at most ``MAX_FIELDS`` parts, text
fields in UTF-8 of at most ``MAX_FIELD_BYTES`` each (the speaker references OpenAI
accepts as data URLs may be larger) and ``MAX_TEXT_BYTES`` together, one file of at most
25 MiB spooled to disk past 1 MiB. A violation is found when its first offending byte
arrives and refused with a 400 or 413 that names the field; nothing is read past it.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import BinaryIO

from litestar.types import Receive
from multipart import MultipartSegment, ParserError, ParserLimitReached, PushMultipartParser

from app.errors import Busy, EarmarkError, InvalidRequest

MAX_FILE_BYTES = 26_214_400  # OpenAI's 25 MiB
MAX_FIELDS = 64
MAX_FIELD_BYTES = 16_384
# OpenAI takes up to four 2-10 s reference recordings as data URLs.
LARGE_FIELDS = {"known_speaker_references[]": 2 << 20, "known_speaker_references": 2 << 20}
MAX_TEXT_BYTES = 4 << 20
MAX_NAME_LENGTH = 100
MAX_BODY_BYTES = MAX_FILE_BYTES + MAX_TEXT_BYTES + (1 << 20)  # and the parts' headers
SPOOL_MEMORY_BYTES = 1 << 20
# What the forms in flight may hold in this process's memory together (text fields, and
# spools not yet on disk): past it a spool goes to disk at once, and a large text field
# is refused (503), so a thousand connections each sending 5 MiB cannot take 5 GiB. One
# tenant's forms may hold a quarter of it (past that, its own text is a 429), so no
# tenant, however many uploads it keeps open, leaves the others without room.
MAX_BUFFERED_BYTES = 256 << 20
TENANT_SHARE = 4
_IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary"})
NOT_MULTIPART = "The request body must be multipart/form-data with the audio in a `file` field."


class PayloadTooLarge(EarmarkError):
    status_code = 413


class TooMuchInFlight(EarmarkError):
    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self) -> None:
        super().__init__(
            "This tenant's uploads in flight hold as much request data as one tenant may; "
            "retry once some have finished.",
            code="too_much_in_flight",
            headers={"retry-after": "1"},
        )


class _Buffered:
    """Bytes held in memory by the forms in flight, in all and by tenant (one event loop:
    no lock needed)."""

    used = 0
    by_tenant: dict[str, int] = {}

    @classmethod
    def take(cls, tenant: str, count: int) -> EarmarkError | None:
        """Count ``count`` more bytes of ``tenant``'s, or the error for why they do not
        fit: the process's budget is full (503), or the tenant's share is (429)."""
        held = cls.by_tenant.get(tenant, 0)
        if cls.used + count > MAX_BUFFERED_BYTES:
            return Busy("The gateway holds as much request data as it can; retry shortly.")
        if held + count > MAX_BUFFERED_BYTES // TENANT_SHARE:
            return TooMuchInFlight()
        cls.used += count
        cls.by_tenant[tenant] = held + count
        return None

    @classmethod
    def give(cls, tenant: str, count: int) -> None:
        if not count:
            return
        cls.used -= count
        held = cls.by_tenant.pop(tenant, 0) - count
        if held:
            cls.by_tenant[tenant] = held


class ClientGone(EarmarkError):
    """The client left before its request body was complete (nobody reads the answer;
    the status is for the ledger row)."""

    status_code = 499

    def __init__(self) -> None:
        super().__init__(
            "The client disconnected before the request body was complete.",
            code="client_disconnected",
        )


@dataclass(frozen=True, slots=True)
class Upload:
    filename: str
    content_type: str
    file: BinaryIO
    size: int

    @property
    def in_memory(self) -> bool:
        # A spool rolls over to disk once written past its memory size.
        return self.size <= SPOOL_MEMORY_BYTES


@dataclass(slots=True)
class Form:
    tenant: str  # whose share of _Buffered it holds
    fields: dict[str, list[str]] = field(default_factory=dict)
    upload: Upload | None = None
    buffered: int = 0  # bytes of it counted in _Buffered

    def close(self) -> None:
        if self.upload is not None:
            self.upload.file.close()
        _Buffered.give(self.tenant, self.buffered)
        self.buffered = 0


def file_too_large(size: int | str) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The audio file is {size} bytes; the limit is {MAX_FILE_BYTES} bytes (25 MiB).",
        param="file",
        code="file_too_large",
    )


async def body_chunks(receive: Receive) -> AsyncIterator[bytes]:
    """The request body as it arrives (Litestar's own stream calls a disconnect a 500)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        if message.get("body"):
            yield message["body"]
        if not message.get("more_body", False):
            return


def _boundary(content_type: str | None) -> str:
    kind, _, params = (content_type or "").partition(";")
    if kind.strip().lower() != "multipart/form-data":
        raise InvalidRequest(NOT_MULTIPART, code="not_multipart")
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary" and value.strip('"'):
            return value.strip('"')
    raise InvalidRequest(NOT_MULTIPART, code="not_multipart")


def _check_part(segment: MultipartSegment, count: int) -> str:
    name = segment.name
    if count > MAX_FIELDS:
        raise InvalidRequest(f"The form has more than {MAX_FIELDS} fields.", code="too_many_fields")
    if not name or len(name) > MAX_NAME_LENGTH or not name.isprintable():
        raise InvalidRequest(
            f"Every form field needs a printable name of at most {MAX_NAME_LENGTH} characters.",
            code="invalid_field_name",
        )
    encoding = (segment.header("Content-Transfer-Encoding") or "binary").strip().lower()
    if encoding not in _IDENTITY_ENCODINGS:
        raise InvalidRequest(
            f"`{name}` uses Content-Transfer-Encoding {encoding!r}; send its bytes as they are.",
            param=name,
            code="unsupported_encoding",
        )
    if name != "file" and segment.charset and segment.charset.lower() not in ("utf-8", "utf8"):
        raise InvalidRequest(
            f"`{name}` is in charset {segment.charset!r}; form fields must be UTF-8.",
            param=name,
            code="unsupported_charset",
        )
    if name != "file" and segment.filename is not None:
        raise InvalidRequest(f"Only `file` may hold a file, not `{name}`.", param=name)
    return name


def _spool() -> BinaryIO:
    return tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)


def _text(name: str, data: bytearray) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"`{name}` is not valid UTF-8.", param=name) from None
    if "\x00" in text:
        raise InvalidRequest(f"`{name}` contains a NUL character.", param=name)
    return text


async def read_form(
    chunks: AsyncIterator[bytes], content_type: str | None, content_length: str | None, tenant: str
) -> Form:
    """Parse ``tenant``'s body into text fields and the one ``file``; the caller closes
    the form."""
    boundary = _boundary(content_type)
    if content_length is not None and (
        not content_length.isdigit() or int(content_length) > MAX_BODY_BYTES
    ):
        raise PayloadTooLarge(
            f"The request body is {content_length} bytes; the limit is {MAX_BODY_BYTES} "
            f"bytes (a 25 MiB file and the other fields).",
            code="request_too_large",
        )
    form = Form(tenant)
    try:
        await _parse(chunks, boundary, form)
    except BaseException:
        form.close()
        raise
    if form.upload is None:
        form.close()
        raise InvalidRequest(
            "Missing the audio file: send it as the multipart field `file`.", param="file"
        )
    if not form.upload.size:
        form.close()
        raise InvalidRequest("The audio file is empty.", param="file", code="empty_file")
    return form


async def _ended(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The body, then the empty chunk that tells the parser it has ended."""
    async for chunk in chunks:
        yield chunk
    yield b""


class _Reader:
    """The multipart parser's events, into a form, under the limits."""

    def __init__(self, form: Form) -> None:
        self.form = form
        self.parts = self.text_total = 0
        self.name = ""
        self.text: bytearray | None = None
        self.spool: BinaryIO | None = None
        self.spooled_in_memory: int | None = None  # bytes of the spool counted, until on disk
        self.size = 0
        self.filename: str | None = None
        self.content_type: str | None = None

    def begin(self, segment: MultipartSegment) -> None:
        self.parts += 1
        self.name = _check_part(segment, self.parts)
        if self.name != "file":
            self.text = bytearray()
            return
        if self.form.upload is not None:
            raise InvalidRequest("Send exactly one audio file in the `file` field.", param="file")
        self.spool, self.size = _spool(), 0
        self.spooled_in_memory = 0
        self.filename, self.content_type = segment.filename, segment.content_type

    def data(self, chunk: bytes) -> None:
        if self.spool is not None:
            self.size += len(chunk)
            if self.size > MAX_FILE_BYTES:
                raise file_too_large(f"more than {MAX_FILE_BYTES}")
            self._hold_spooled(len(chunk))
            self.spool.write(chunk)
            return
        assert self.text is not None
        refused = _Buffered.take(self.form.tenant, len(chunk))
        if refused is not None:
            raise refused
        self.form.buffered += len(chunk)
        self.text += chunk
        self.text_total += len(chunk)
        limit = LARGE_FIELDS.get(self.name, MAX_FIELD_BYTES)
        if len(self.text) > limit:
            raise InvalidRequest(
                f"`{self.name}` is longer than {limit} bytes.",
                param=self.name,
                code="field_too_long",
            )
        if self.text_total > MAX_TEXT_BYTES:
            raise PayloadTooLarge(
                f"The form's text fields exceed {MAX_TEXT_BYTES} bytes.",
                param=self.name,
                code="request_too_large",
            )

    def _hold_spooled(self, count: int) -> None:
        """Count a chunk the spool keeps in memory; once it is past its memory size, or the
        process or the tenant is past its budget, the spool is on disk and counts for
        nothing."""
        assert self.spool is not None
        if self.spooled_in_memory is None:
            return  # on disk already
        if self.size <= SPOOL_MEMORY_BYTES and _Buffered.take(self.form.tenant, count) is None:
            self.spooled_in_memory += count
            self.form.buffered += count
            return
        self.spool.rollover()  # type: ignore[attr-defined]
        _Buffered.give(self.form.tenant, self.spooled_in_memory)
        self.form.buffered -= self.spooled_in_memory
        self.spooled_in_memory = None

    def end(self) -> None:
        if self.spool is not None:
            self.spool.seek(0)
            self.form.upload = Upload(
                filename=self.filename or "audio",
                content_type=self.content_type or "application/octet-stream",
                file=self.spool,
                size=self.size,
            )
            self.spool = None
        else:
            assert self.text is not None
            self.form.fields.setdefault(self.name, []).append(_text(self.name, self.text))
            self.text = None

    def close(self) -> None:
        """Drop a file part the body ended (or was refused) in the middle of."""
        if self.spool is not None:
            self.spool.close()


async def _parse(chunks: AsyncIterator[bytes], boundary: str, form: Form) -> None:
    reader = _Reader(form)
    try:
        with PushMultipartParser(boundary, max_segment_count=MAX_FIELDS + 1) as parser:
            async for chunk in _ended(chunks):
                for event in parser.parse(chunk):
                    if isinstance(event, MultipartSegment):
                        reader.begin(event)
                    elif event:
                        reader.data(event)
                    else:
                        reader.end()
                if parser.closed:
                    return
    except (ParserError, ParserLimitReached):
        raise InvalidRequest(NOT_MULTIPART, code="not_multipart") from None
    finally:
        reader.close()
