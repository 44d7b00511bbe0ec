"""Request dependencies: the process's resources and the authenticated tenant."""

from __future__ import annotations

from litestar import Request
from litestar.datastructures import State
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth import Principal, authenticate_tenant, presented_key
from app.settings import Settings


def provide_engine(state: State) -> AsyncEngine:
    return state.engine


def provide_settings(state: State) -> Settings:
    return state.settings


async def provide_principal(request: Request) -> Principal:
    state = request.app.state
    return await authenticate_tenant(
        state.engine, state.settings.key_pepper, presented_key(request.headers)
    )
