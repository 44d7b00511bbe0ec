"""What the admin routes read from a request: ids, cursors and page sizes, each bounded so
that a NUL byte or ten kilobytes never reach a query, and JSON bodies decoded strictly."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Request
from litestar.params import Parameter, QueryParameter

from app.envelope import body_param
from app.errors import InvalidRequest
from app.ids import ID_MAX_LENGTH, ID_PATTERN
from app.pagination import MAX_LIMIT

ACTOR_PATTERN = r"^(token|cli|(user|cli):[^\x00-\x1f\x7f]{1,115})$"  # as audit.Actor writes
ACTION_PATTERN = r"^[a-z_]{1,16}\.[a-z_]{1,23}$"  # TYPE.VERB
PathId = Annotated[str, Parameter(pattern=ID_PATTERN, max_length=ID_MAX_LENGTH)]
QueryId = Annotated[str | None, Parameter(pattern=ID_PATTERN, max_length=ID_MAX_LENGTH)]
Cursor = Annotated[
    str | None,
    Parameter(
        pattern=ID_PATTERN, max_length=ID_MAX_LENGTH, description="next_cursor of the page before"
    ),
]
Limit = Annotated[int, Parameter(ge=1, le=MAX_LIMIT, description="Page size")]
From = Annotated[str | None, QueryParameter(name="from", description="inclusive, RFC 3339")]
To = Annotated[str | None, QueryParameter(name="to", description="exclusive, RFC 3339")]
AllowUnknownModels = Annotated[
    bool,
    Parameter(
        description="Accept `allowed_models` entries this gateway's catalog does not know "
        "(e.g. a model configured later); by default such an entry is a 400"
    ),
]


async def strict_json_body(request: Request) -> None:
    """``before_request`` of the admin API: decode the JSON body strictly against the
    handler's ``data`` type (``"10"`` is not an integer, and nesting ends where the type
    does), so Litestar's lenient conversion only ever sees bodies that were already valid."""
    field = request.route_handler.parsed_fn_signature.parameters.get("data")
    if field is None:
        return
    body = await request.body()
    if not body.strip():
        return  # Litestar says a body is required, where one is
    try:
        msgspec.json.decode(body, type=field.annotation, strict=True)
    except msgspec.ValidationError as error:
        raise InvalidRequest(
            str(error), param=body_param(str(error)), code="invalid_value"
        ) from None
    except msgspec.DecodeError as error:
        raise InvalidRequest(f"The request body is not valid JSON: {error}.") from None
