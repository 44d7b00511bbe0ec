"""A real Prometheus scrapes `earmark serve --workers 2`: counters summed over the workers
equal the calls made, and every Operations panel's PromQL parses and returns data."""

from __future__ import annotations

import asyncio
import glob
import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict

from tests.conftest import ADMIN, ADMIN_TOKEN, not_run
from tests.fake_provider import API_KEY
from tests.gateway import CONFIG, FIXTURES, KEY_ENV, scrape
from tests.grafana import dashboard, interpolate, panels, variables
from tests.processes import earmark_env, free_port, serving

PROMETHEUS = shutil.which("prometheus")
SPEECH = (FIXTURES / "speech.wav").read_bytes()
SUCCESSES = 40  # whisper-1 and gpt-4o-transcribe, spread over both workers
CALLS = SUCCESSES + 7  # the metered ones of the calls that follow (the 401 is not)
OPERATIONS = dashboard("operations")
# Grafana's "All" for the instance variable, and a rate window that spans several scrapes.
PANEL_VALUES = {"instance": ".*", "__rate_interval": "1m"}


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    if PROMETHEUS:
        return PROMETHEUS
    not_run("prometheus is not installed (apt-get install prometheus): scrape test NOT RUN")


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, expected: float, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while (value := self.value(expr)) != expected:
            assert time.monotonic() < deadline, f"{expr} = {value}, expected {expected}"
            time.sleep(0.5)


def _start_prometheus(binary: str, target: str, directory: Path) -> Iterator[Prometheus]:
    config = directory / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: earmark\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    log = directory / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        # Prometheus answers 503 "Service Unavailable" to queries until its storage is open
        # (slow on a loaded machine), so wait for /-/ready before asking anything.
        while not prometheus.ready():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        prometheus.wait_for('up{job="earmark"}', 1, timeout=deadline - time.monotonic())
        yield prometheus
    finally:
        process.terminate()
        process.wait(timeout=30)


async def _traffic(base: str, keys: dict[str, str]) -> list[int]:
    """Successes spread over both workers (one connection each), then one refusal of each
    kind and one call whose provider is down (it falls back)."""

    async def call(client: httpx.AsyncClient, secret: str, model: str) -> int:
        response = await client.post(
            f"{base}/v1/audio/transcriptions",
            headers={"authorization": f"Bearer {secret}"},
            data={"model": model},
            files={"file": ("speech.wav", SPEECH, "audio/wav")},
        )
        return response.status_code

    limits = httpx.Limits(max_connections=SUCCESSES, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        models = ["openai/whisper-1", "gpt-4o-transcribe"]
        statuses = await asyncio.gather(
            *(call(client, keys["open"], models[i % 2]) for i in range(SUCCESSES))
        )
        for secret, model in [
            (keys["open"], "down/whisper-1"),  # 200 from the fallback
            (keys["poor"], "openai/whisper-1"),  # 402
            (keys["slow"], "openai/whisper-1"),  # 200
            (keys["slow"], "openai/whisper-1"),  # 429
            ("sk-bf-wrong", "openai/whisper-1"),  # 401, not a metered call
            (keys["open"], ""),  # 400
            (keys["open"], "cached/whisper-1"),  # 200, kept in the cache
            (keys["open"], "cached/whisper-1"),  # 200, a cache hit
        ]:
            statuses.append(await call(client, secret, model))
    return statuses


@pytest.fixture(scope="module")
def scraped(
    prometheus_binary: str, fake_provider: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("prometheus")
    config = directory / "earmark.toml"
    config.write_text(CONFIG.format(fake=fake_provider.url, key_env=KEY_ENV, closed=free_port()))
    metrics_dir = directory / "metrics"
    env = earmark_env(
        f"sqlite+aiosqlite:///{directory / 'earmark.db'}",
        EARMARK_ADMIN_TOKEN=ADMIN_TOKEN,
        EARMARK_CONFIG=str(config),
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        **{KEY_ENV: API_KEY},
    )
    fake_provider.script.reset()
    with serving(env, directory / "earmark.log", "--workers", "2") as base:
        bodies = {
            "open": {},
            "poor": {"budgets": [{"limit_usd": "0.000001", "period": "day"}]},
            "slow": {"rate_limits": {"requests_per_minute": 1}},
        }
        with httpx.Client(base_url=base, headers=ADMIN) as admin:
            tenant = admin.post("/admin/tenants", json={"name": "acme"}).json()
            keys = {
                name: admin.post(
                    "/admin/keys", json={"tenant_id": tenant["id"], "name": name, **body}
                ).json()["secret"]
                for name, body in bodies.items()
            }
        target = base.removeprefix("http://")
        for prometheus in _start_prometheus(prometheus_binary, target, directory):
            statuses = asyncio.run(_traffic(base, keys))
            # Every call is in Prometheus, and two more scrapes have passed since.
            prometheus.wait_for("sum(earmark_calls_total)", CALLS)
            time.sleep(2.5)
            yield {
                "base": base,
                "statuses": statuses,
                "prometheus": prometheus,
                "metrics_dir": metrics_dir,
                "target": target,
            }


def test_the_traffic_went_as_planned(scraped: dict) -> None:
    assert scraped["statuses"] == [200] * SUCCESSES + [200, 402, 200, 429, 401, 400, 200, 200]


def test_counters_sum_over_both_workers(scraped: dict) -> None:
    """Each worker wrote its own counts; /metrics and Prometheus both see their sum."""
    per_worker = []
    for path in glob.glob(str(scraped["metrics_dir"] / "counter_*.db")):
        per_worker.append(
            sum(
                value
                for key, value, _, _ in MmapedDict.read_all_values_from_file(path)
                if json.loads(key)[1] == "earmark_calls_total"
            )
        )
    assert len([count for count in per_worker if count > 0]) == 2, per_worker
    assert sum(per_worker) == CALLS
    samples = scrape(scraped["base"])
    calls = [v for (name, _), v in samples.items() if name == "earmark_calls_total"]
    assert sum(calls) == CALLS
    prometheus = scraped["prometheus"]
    assert prometheus.value('sum(earmark_calls_total{outcome="succeeded"})') == SUCCESSES + 4
    assert prometheus.value('sum(earmark_refusals_total{reason="auth"})') == 1
    assert prometheus.value("sum(earmark_holds_in_flight)") == 0


def _exprs() -> Iterator[tuple[str, str]]:
    for panel in panels(OPERATIONS):
        for target in panel["targets"]:
            yield panel["title"], interpolate(target["expr"], PANEL_VALUES)


@pytest.mark.parametrize(("title", "expr"), list(_exprs()))
def test_every_operations_query_returns_data(scraped: dict, title: str, expr: str) -> None:
    result = scraped["prometheus"].query(expr)
    values = [float(series["value"][1]) for series in result]
    assert any(math.isfinite(value) for value in values), (title, expr, result)


def test_operations_dashboard_uses_only_exported_metrics(scraped: dict) -> None:
    exported = {name for name, _ in scrape(scraped["base"])}
    used = set(re.findall(r"\bearmark_\w+", json.dumps(OPERATIONS)))
    assert used and used <= exported, used - exported


def test_instance_variable_lists_the_gateway(scraped: dict) -> None:
    query = variables(OPERATIONS)["instance"]["definition"]
    metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", query).groups()
    response = httpx.get(
        f"{scraped['prometheus'].url}/api/v1/label/{label}/values", params={"match[]": metric}
    )
    assert response.json()["data"] == [scraped["target"]]
