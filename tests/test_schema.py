"""The API's documentation: a valid OpenAPI 3.1 schema that says what the routes really
take and answer, and a /schema page that renders in a real browser with nothing fetched
from another origin."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from openapi_spec_validator import validate

from app.main import create_app
from app.settings import Settings
from tests.browser import chromium, screenshot
from tests.conftest import ADMIN_TOKEN
from tests.servers import ServerThread

ENVELOPE = {"$ref": "#/components/schemas/ErrorEnvelope"}


@pytest.fixture(scope="module")
def spec() -> dict:
    return create_app(Settings(admin_token=ADMIN_TOKEN)).openapi_schema.to_schema()


def test_the_schema_is_valid_openapi_3_1(spec):
    assert spec["openapi"].startswith("3.1")
    validate(spec)


@pytest.mark.parametrize("endpoint", ["transcriptions", "translations"])
def test_the_audio_endpoints_document_their_form_answers_and_refusals(spec, endpoint):
    operation = spec["paths"][f"/v1/audio/{endpoint}"]["post"]
    form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["file", "model"]
    assert form["properties"]["file"]["format"] == "binary"
    formats = set(form["properties"]["response_format"]["enum"])
    assert formats >= {"json", "text", "srt", "verbose_json", "vtt"}
    assert ("diarized_json" in formats) == (endpoint == "transcriptions")
    if endpoint == "transcriptions":
        assert {"timestamp_granularities[]", "include[]", "stream", "chunking_strategy"} <= set(
            form["properties"]
        )

    responses = operation["responses"]
    assert "201" not in responses
    ok = responses["200"]
    assert set(ok["content"]) == {"application/json", "text/plain", "text/event-stream"}
    assert {"x-bf-cache", "x-request-id"} <= set(ok["headers"])
    for status in ("400", "401", "402", "403", "404", "413", "429", "502", "503", "504"):
        assert responses[status]["content"]["application/json"]["schema"] == ENVELOPE, status
    assert "retry-after" in responses["429"]["headers"]
    assert "x-should-retry" in responses["402"]["headers"]
    assert "x-should-retry" in responses["502"]["headers"]  # after work a provider may bill


def test_every_error_anywhere_is_the_envelope(spec):
    envelope = spec["components"]["schemas"]["ErrorEnvelope"]
    assert envelope["required"] == ["error"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == ENVELOPE, (method, path, status)
    assert "ValidationException" not in str(spec)  # Litestar's own 400 body, never sent


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("schema")
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{directory / 'e.db'}",
        admin_token=ADMIN_TOKEN,
        journal_dir=str(directory / "journal"),
    )
    from app.storage.migrate import upgrade

    upgrade(settings.database_url)
    with ServerThread(create_app(settings)) as running:
        yield running.url


def test_the_schema_page_loads_its_assets_from_this_server(server):
    page = httpx.get(f"{server}/schema")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "unpkg" not in page.text.lower()
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui-standalone-preset.js"):
        assert f'"/schema/assets/{asset}"' in page.text
        served = httpx.get(f"{server}/schema/assets/{asset}")
        assert served.status_code == 200
        assert len(served.content) > 10_000


def test_the_schema_page_renders_the_api_in_a_real_browser(server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    with chromium() as browser:
        browser.get(f"{server}/schema")
        WebDriverWait(browser, 30).until(
            expected_conditions.presence_of_element_located((By.CSS_SELECTOR, ".opblock"))
        )
        text = browser.find_element(By.TAG_NAME, "body").text
        assert "/v1/audio/transcriptions" in text
        assert "/admin/keys" in text
        fetched = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert fetched and all(url.startswith(server) for url in fetched), fetched
        screenshot(browser, "schema")


def test_every_admin_list_has_one_shape(spec):
    """`{data, next_cursor}` for every list, never a bare array (a usage report, with its
    totals, is one answer, not a page)."""

    def resolved(schema: dict) -> dict:
        name = schema.get("$ref", "").rsplit("/", 1)[-1]
        return spec["components"]["schemas"][name] if name else schema

    lists = 0
    for path, operations in spec["paths"].items():
        if not path.startswith("/admin") or "get" not in operations:
            continue
        content = operations["get"]["responses"]["200"].get("content", {})
        schema = resolved(content.get("application/json", {}).get("schema", {}))
        assert schema.get("type") != "array", path
        if "data" in schema.get("properties", {}) and "totals" not in schema["properties"]:
            lists += 1
            assert {"data", "next_cursor"} <= set(schema["required"]), path
    assert lists >= 7  # tenants, keys, calls (twice), budgets, periods, events
