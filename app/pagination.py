"""Keyset pagination over time-ordered ids: newest first, the cursor is the last id seen."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # the CLI reads MAX_LIMIT without importing SQLAlchemy
    from sqlalchemy import ColumnElement, Select

T = TypeVar("T")
DEFAULT_LIMIT = 50
MAX_LIMIT = 200


def paginate(
    query: Select[Any], id_column: ColumnElement[str], limit: int, cursor: str | None
) -> Select[Any]:
    if cursor:
        query = query.where(id_column < cursor)
    # One extra row tells whether there is a next page.
    return query.order_by(id_column.desc()).limit(limit + 1)


def split_page(items: Sequence[T], limit: int, cursor_of: Any) -> tuple[list[T], str | None]:
    page = list(items[:limit])
    next_cursor = cursor_of(page[-1]) if len(items) > limit else None
    return page, next_cursor
