"""The short form of ``bench/chaos.py``: three gateways under load, killed with SIGKILL
and restarted, a provider failing in every way it can (and, on PostgreSQL, a cluster of
the test's own crashed mid-run and started again). Every invariant must hold: what the
provider billed is charged or listed for review, every 200 is a settled and charged row,
no cap is exceeded, counters equal the ledger, nothing stays open, no false "nothing was
sent"."""

from __future__ import annotations

import pytest

from bench import chaos
from tests.conftest import not_run

SECONDS = 25


def _check(report: dict) -> None:
    assert report["violations"] == [], report
    assert report["statuses"].get(200, 0) > 20, report  # the run did real work
    assert report["kills"] >= 3, report
    assert report["for_review"] > 0, report  # the faults landed on calls
    assert report["budget_samples"] > 50, report


def test_chaos_on_sqlite() -> None:
    _check(chaos.run("sqlite", seconds=SECONDS, clients=8))


@pytest.mark.postgres
def test_chaos_on_a_postgresql_cluster_that_goes_down() -> None:
    if not chaos.PG_BIN.exists():
        not_run(f"{chaos.PG_BIN} is missing: the PostgreSQL chaos run NOT RUN")
    report = chaos.run("postgres", seconds=SECONDS, clients=8)
    _check(report)
    assert report["database_outages"] == 1
