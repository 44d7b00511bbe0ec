"""The examples in /schema/openapi.json: every admin operation and tenant call shows its
request and its answer, each valid against the schema documented beside it, decoded by the
handler's own msgspec types, and shaped like what the service really answers."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, get_args, get_origin

import msgspec
import pytest
from jsonschema import Draft202012Validator
from litestar import Litestar, Response
from litestar.handlers import HTTPRouteHandler
from litestar.routes import HTTPRoute

from app.access import key_format
from app.main import create_app
from app.openapi_examples import EXAMPLES, OperationExample
from app.settings import Settings
from tests.conftest import ADMIN, ADMIN_TOKEN, bearer


@pytest.fixture(scope="module")
def app() -> Litestar:
    return create_app(Settings(admin_token=ADMIN_TOKEN))


@pytest.fixture(scope="module")
def spec(app: Litestar) -> dict:
    return app.openapi_schema.to_schema()


@dataclass
class Documented:
    handler: HTTPRouteHandler
    method: str
    path: str  # as the schema writes it: /admin/keys/{key_id}
    operation: dict[str, Any]

    @property
    def body(self) -> dict[str, Any]:
        return self.operation.get("requestBody", {}).get("content", {}).get("application/json", {})

    @property
    def answer(self) -> dict[str, Any]:
        (status,) = [s for s in self.operation["responses"] if s.startswith("2")]
        return self.operation["responses"][status].get("content", {}).get("application/json", {})

    def shown(self) -> OperationExample:
        return OperationExample(self.body.get("example"), self.answer.get("example"))


def _documented(app: Litestar, spec: dict) -> Iterator[Documented]:
    """Every admin operation and tenant call but the audio ones (a form, not JSON)."""
    for route in app.routes:
        if isinstance(route, HTTPRoute) and route.path.startswith(("/admin/", "/v1/")):
            for method, (handler, _) in route.route_handler_map.items():
                operation = spec["paths"][route.path_format].get(method.lower())
                content = operation and operation.get("requestBody", {}).get("content", {})
                if operation and "multipart/form-data" not in content:
                    yield Documented(handler, method, route.path_format, operation)


@pytest.fixture(scope="module")
def documented(app: Litestar, spec: dict) -> dict[str, Documented]:
    found = {d.handler.handler_name: d for d in _documented(app, spec)}
    assert len(found) == len(list(_documented(app, spec))), "two handlers share a name"
    return found


def test_every_operation_shows_an_example_request_and_answer(documented):
    for d in documented.values():
        assert not d.body or "example" in d.body, f"{d.method} {d.path}: no example request"
        assert not d.answer or "example" in d.answer, f"{d.method} {d.path}: no example answer"
    shown = {name: d.shown() for name, d in documented.items() if d.shown() != (None, None)}
    assert shown == EXAMPLES  # each example on its own operation, none left over
    assert set(documented) - set(shown) == {"delete_key", "delete_budget", "delete_webhook"}


def test_every_example_is_valid_against_its_documented_schema(documented, spec):
    for d in documented.values():
        for part in (d.body, d.answer):
            if part:
                # "#/components/…" resolves against the root: give the root the components.
                schema = {**part["schema"], "components": spec["components"]}
                validator = Draft202012Validator(
                    schema, format_checker=Draft202012Validator.FORMAT_CHECKER
                )
                errors = [e.message for e in validator.iter_errors(part["example"])]
                assert not errors, (d.method, d.path, errors)


def _answer_type(handler: HTTPRouteHandler) -> Any:
    """What a handler answers as JSON (``T`` of a ``Response[T]``)."""
    answer = handler.parsed_fn_signature.return_type.annotation
    return get_args(answer)[0] if get_origin(answer) is Response else answer


def test_every_example_decodes_as_the_handlers_own_types(documented):
    """What a handler really takes and answers: a renamed, added or retyped field fails."""
    for d in documented.values():
        where = f"{d.method} {d.path}"
        if "example" in d.body:
            body_type = d.handler.parsed_fn_signature.parameters["data"].annotation
            # The request types forbid unknown fields and check their values as a request
            # would be (a 400 here is a ValidationError).
            msgspec.json.decode(json.dumps(d.body["example"]), type=body_type)
        if "example" in d.answer:
            example = d.answer["example"]
            decoded = msgspec.json.decode(json.dumps(example), type=_answer_type(d.handler))
            # Encoded again it is the example: no field the type lacks (decoding drops it),
            # none left out that the API writes, every time and amount in the API's format.
            assert msgspec.to_builtins(decoded) == example, where


def _strings(value: Any, where: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _strings(item, f"{where}.{name}")
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, f"{where}[]")
    elif isinstance(value, str):
        yield where, value


def test_a_secret_is_shown_where_the_api_shows_one_and_nowhere_else():
    secrets = []
    for name, example in EXAMPLES.items():
        for where, text in _strings(example.response):
            if where == ".secret" and text.startswith("whsec_"):
                assert len(base64.b64decode(text.removeprefix("whsec_"))) == 32, name
                secrets.append(name)
            elif where == ".secret":
                assert key_format.is_well_formed(text), name
                assert key_format.display_prefix(text) == example.response["display_prefix"]
                secrets.append(name)
            elif text.startswith(key_format.PREFIX):
                assert len(text) == key_format.DISPLAY_LENGTH, (name, where)
        for where, text in _strings(example.request):
            assert not text.startswith(key_format.PREFIX), (name, where)
    assert sorted(secrets) == [
        "create_key",
        "create_webhook",
        "rotate_key",
        "rotate_webhook_secret",
    ]


_ID = re.compile(r"([a-z]{3})_[0-9A-HJKMNP-TV-Z]{26}")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z")
_USD = re.compile(r"\d+\.\d{9}")


def _kind(value: Any) -> str:
    """What a reader takes a scalar to be: an id of some kind, a time, an amount, a key."""
    if isinstance(value, str):
        if found := _ID.fullmatch(value):
            return f"{found[1]}_ id"
        if _TIME.fullmatch(value):
            return "time"
        if _USD.fullmatch(value):
            return "usd"
        if value.startswith(key_format.PREFIX):
            return "secret" if key_format.is_well_formed(value) else "display prefix"
    return type(value).__name__


def _unlike(example: Any, real: Any, where: str = "") -> list[str]:
    """Where the example's shape is not the real answer's. Null is like anything: a field
    that may be null need not be in both; so is an empty list."""
    if example is None or real is None:
        return []
    if isinstance(example, dict) and isinstance(real, dict):
        if example.keys() != real.keys():
            return [f"{where}: fields {sorted(example.keys() ^ real.keys())} in one only"]
        return [
            u for name in example for u in _unlike(example[name], real[name], f"{where}.{name}")
        ]
    if isinstance(example, list) and isinstance(real, list):
        return _unlike(example[0], real[0], f"{where}[0]") if example and real else []
    if _kind(example) != _kind(real):
        return [f"{where}: {example!r} ({_kind(example)}), really {real!r} ({_kind(real)})"]
    return []


def test_every_example_is_shaped_like_the_real_answer(gateway, documented):
    """Each operation is run on the service, with its example body where it takes one."""
    ran: set[str] = set()
    ids: dict[str, str] = {}

    def run(name: str, body: Any = None, params: Any = None, key: Any = None) -> Any:
        d = documented[name]
        if body is None:
            body = d.body.get("example")
        response = gateway.http.request(
            d.method,
            d.path.format(**ids),
            json=body,
            params=params,
            headers=bearer(key["secret"]) if key else ADMIN,
        )
        assert response.status_code < 300, (name, response.text)
        unlike = _unlike(d.answer["example"], response.json())
        assert not unlike, (name, unlike)
        ran.add(name)
        return response.json()

    ids["tenant_id"] = run("create_tenant")["id"]
    # The example's own tenant, and an expiry still ahead (the example's is as of its date).
    next_year = (datetime.now(UTC) + timedelta(days=365)).isoformat()
    creation = {**EXAMPLES["create_key"].request, "tenant_id": ids["tenant_id"]}
    key = run("create_key", {**creation, "expires_at": next_year})
    ids["key_id"] = key["id"]
    assert gateway.post_audio(key, "openai/whisper-1").status_code == 200  # a call to list
    for name in ("list_tenants", "get_tenant", "list_keys", "get_key", "list_key_calls"):
        run(name)
    run("list_calls")
    run("add_key_budget")
    run("list_budgets", params={"key_id": ids["key_id"]})
    # A budget no call has charged: a reset forgets spend the ledger keeps.
    ids["budget_id"] = run("add_tenant_budget")["id"]
    for name in ("get_budget", "update_budget", "top_up", "reset"):
        run(name)
    run("budget_periods")
    run("budget_events")
    run("quota", key=key)
    run("models", key=key)
    report = EXAMPLES["usage_report"].response
    run("usage_report", params={"group_by": ",".join(report["group_by"])})
    ids["webhook_id"] = run(
        "create_webhook", {**EXAMPLES["create_webhook"].request, "tenant_id": ids["tenant_id"]}
    )["id"]
    for name in ("list_webhooks", "get_webhook", "update_webhook", "rotate_webhook_secret"):
        run(name)
    for name in ("rotate_key", "update_key", "revoke_key", "update_tenant", "deactivate_tenant"):
        run(name)
    # The webhook's deliveries: the key's events (its host resolves nowhere here, so they
    # stay pending), one of them sent again on request.
    ids["delivery_id"] = run("list_webhook_deliveries")["data"][0]["id"]
    run("redeliver_webhook")
    revocation = run("list_audit", params={"target": ids["key_id"], "action": "key.revoke"})
    assert [entry["action"] for entry in revocation["data"]] == ["key.revoke"]
    assert ran == set(EXAMPLES)
