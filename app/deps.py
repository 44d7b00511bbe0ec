"""Request dependencies: the process's resources and the authenticated tenant."""

from __future__ import annotations

from litestar import Request
from litestar.datastructures import State
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth import Principal
from app.gateway.call import Gateway
from app.settings import Settings


def provide_engine(state: State) -> AsyncEngine:
    return state.engine


def provide_settings(state: State) -> Settings:
    return state.settings


def provide_gateway(state: State) -> Gateway:
    return state.gateway


def provide_principal(request: Request) -> Principal:
    """The tenant key that ``auth.require_tenant`` authenticated for this request."""
    return request.state.principal
