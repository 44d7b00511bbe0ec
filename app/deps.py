"""Request dependencies: the process's resources and the authenticated tenant."""

from __future__ import annotations

from litestar import Request
from litestar.datastructures import State
from sqlalchemy.ext.asyncio import AsyncEngine

from app.access.auth import Principal
from app.gateway.call import Gateway
from app.ops.audit import Actor
from app.request_id import request_id
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


def provide_actor(request: Request) -> Actor:
    """Who ``auth.require_admin`` let in ("token" or "user:NAME"), with the request's id and
    address, for the audit trail."""
    return Actor(
        str(request.state.admin),
        request_id=request_id(request.scope),
        source=request.client.host if request.client else None,
    )
