"""The `earmark` command, run as an operator runs it."""

import json
import subprocess
import sys

import pytest

from tests.conftest import create_postgres_database, drop_postgres_database
from tests.processes import earmark_env, run_cli, serving


def _ok(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_tenant_and_key_lifecycle(database_url):
    env = earmark_env(database_url)
    tenant = _ok(run_cli(env, "tenants", "create", "acme", "--metadata", '{"plan": "pro"}'))
    assert tenant["metadata"] == {"plan": "pro"}
    assert [t["id"] for t in _ok(run_cli(env, "tenants", "list"))["data"]] == [tenant["id"]]

    created = _ok(
        run_cli(
            env,
            "keys",
            "create",
            "--tenant",
            tenant["id"],
            "--name",
            "ci",
            "--allow-model",
            "whisper-1",
            "--allow-model",
            "groq/whisper-large-v3",
            "--expires-at",
            "2099-01-01T00:00:00Z",
        )
    )
    assert created["secret"].startswith("sk-bf-")
    assert created["allowed_models"] == ["whisper-1", "groq/whisper-large-v3"]

    shown = _ok(run_cli(env, "keys", "show", created["id"]))
    assert "secret" not in shown
    assert (
        _ok(run_cli(env, "keys", "list", "--tenant", tenant["id"]))["data"][0]["id"]
        == created["id"]
    )

    rotated = _ok(run_cli(env, "keys", "rotate", created["id"], "--grace-seconds", "60"))
    assert rotated["secret"] != created["secret"]
    assert rotated["previous_secret_valid_until"] is not None

    revoked = _ok(run_cli(env, "keys", "revoke", created["id"]))
    assert revoked["status"] == "revoked"
    assert (
        _ok(run_cli(env, "keys", "list", "--status", "revoked"))["data"][0]["id"] == created["id"]
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["keys", "create", "--tenant", "ten_missing", "--name", "x"], "no tenant"),
        (["keys", "create", "--tenant", "ten_x", "--name", ""], "name"),
        (
            ["keys", "create", "--tenant", "ten_x", "--name", "x", "--expires-at", "soon"],
            "expires_at",
        ),
        (["keys", "show", "key_missing"], "no key"),
        (["tenants", "create", "acme", "--metadata", "[1]"], "JSON object"),
    ],
)
def test_bad_input_exits_nonzero_with_a_message(database_url, args, needle):
    result = run_cli(earmark_env(database_url), *args)
    assert result.returncode != 0
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


def test_admin_create_user_reads_the_password_from_stdin(database_url):
    env = earmark_env(database_url)
    created = _ok(run_cli(env, "admin", "create-user", "alice", stdin="a long password 123\n"))
    assert created["name"] == "alice"
    short = run_cli(env, "admin", "create-user", "bob", stdin="short\n")
    assert short.returncode != 0
    assert "12 characters" in short.stderr


@pytest.mark.postgres
def test_postgres_behind_head_is_refused_with_what_to_run(tmp_path):
    import asyncio

    url = asyncio.run(create_postgres_database())
    try:
        env = earmark_env(url)
        listing = run_cli(env, "keys", "list")
        assert listing.returncode != 0
        assert "earmark migrate" in listing.stderr

        serve = subprocess.run(
            [sys.executable, "-m", "app", "serve", "--port", "1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert serve.returncode != 0
        assert "earmark migrate" in serve.stdout + serve.stderr

        assert run_cli(env, "migrate").returncode == 0
        with serving(env, tmp_path / "serve.log") as base:
            import httpx

            assert httpx.get(f"{base}/readyz").json()["status"] == "ready"
    finally:
        asyncio.run(drop_postgres_database(url))


def test_sqlite_migrates_itself_on_serve(tmp_path):
    import httpx

    env = earmark_env(f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}")
    with serving(env, tmp_path / "serve.log") as base:
        assert httpx.get(f"{base}/readyz").json()["status"] == "ready"
