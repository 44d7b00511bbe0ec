"""The `earmark` command, run as an operator runs it."""

import argparse
import json
import re
import subprocess
import sys

import pytest

from app.cli import build_parser
from tests.conftest import (
    ADMIN_TEST_CONFIG,
    create_postgres_database,
    drop_postgres_database,
    postgres_database,
)
from tests.processes import earmark_env, run_cli, serving


def _json(env: dict[str, str], *args: str, stdin: str = "") -> dict:
    """What a command prints with --json, once it has succeeded."""
    result = run_cli(env, *args, "--json", stdin=stdin)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_tenant_and_key_lifecycle(database_url, tmp_path):
    (tmp_path / "earmark.toml").write_text(ADMIN_TEST_CONFIG)
    env = earmark_env(database_url, EARMARK_CONFIG=str(tmp_path / "earmark.toml"))
    tenant = _json(env, "tenants", "create", "acme", "--metadata", '{"plan": "pro"}')
    assert tenant["metadata"] == {"plan": "pro"}
    assert [t["id"] for t in _json(env, "tenants", "list")["data"]] == [tenant["id"]]

    created = _json(
        env,
        *("keys", "create", "--tenant", tenant["id"], "--name", "ci"),
        *("--allow-model", "whisper-1", "--allow-model", "groq/whisper-large-v3"),
        *("--expires-at", "2099-01-01T00:00:00Z"),
    )
    assert created["secret"].startswith("sk-bf-")
    assert created["allowed_models"] == ["whisper-1", "groq/whisper-large-v3"]

    shown = _json(env, "keys", "show", created["id"])
    assert "secret" not in shown
    assert _json(env, "keys", "list", "--tenant", tenant["id"])["data"][0]["id"] == created["id"]

    rotated = _json(env, "keys", "rotate", created["id"], "--grace-seconds", "60")
    assert rotated["secret"] != created["secret"]
    assert rotated["previous_secret_valid_until"] is not None

    revoked = _json(env, "keys", "revoke", created["id"])
    assert revoked["status"] == "revoked"
    assert _json(env, "keys", "list", "--status", "revoked")["data"][0]["id"] == created["id"]


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
    created = _json(env, "admin", "create-user", "alice", stdin="a long password 123\n")
    assert created["name"] == "alice"
    short = run_cli(env, "admin", "create-user", "bob", stdin="short\n")
    assert short.returncode != 0
    assert "12 characters" in short.stderr


def test_admin_users_are_listed_given_new_passwords_and_deleted(database_url, tmp_path):
    import httpx

    env = earmark_env(database_url)
    _json(env, "admin", "create-user", "alice", stdin="the first password\n")
    _json(env, "admin", "create-user", "bob", stdin="bob's own password\n")
    assert [u["name"] for u in _json(env, "admin", "list-users")["data"]] == ["alice", "bob"]
    with serving(env, tmp_path / "serve.log") as base:

        def status(user: str, password: str) -> int:
            return httpx.get(f"{base}/admin/tenants", auth=(user, password)).status_code

        assert status("alice", "the first password") == 200
        changed = run_cli(env, "admin", "set-password", "alice", stdin="the second password\n")
        assert changed.returncode == 0, changed.stderr
        assert status("alice", "the first password") == 401
        assert status("alice", "the second password") == 200
        assert run_cli(env, "admin", "delete-user", "bob").returncode == 0
        assert status("bob", "bob's own password") == 401
    missing = run_cli(env, "admin", "delete-user", "bob")
    assert missing.returncode != 0 and "no admin user named 'bob'" in missing.stderr
    short = run_cli(env, "admin", "set-password", "alice", stdin="short\n")
    assert short.returncode != 0 and "12 characters" in short.stderr
    assert [u["name"] for u in _json(env, "admin", "list-users")["data"]] == ["alice"]


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


def test_a_config_mistake_stops_serve_with_one_line(tmp_path):
    (tmp_path / "earmark.toml").write_text('[providers.local]\nkind = "locale"\n')
    env = earmark_env(
        f"sqlite+aiosqlite:///{tmp_path / 'e.db'}", EARMARK_CONFIG=str(tmp_path / "earmark.toml")
    )
    for command in (["serve", "--port", "1"], ["check-config"]):
        result = run_cli(env, *command)
        assert result.returncode != 0
        assert result.stderr.strip() == (
            f"earmark: {tmp_path / 'earmark.toml'}: providers.local.kind: "
            "'locale' is not one of openai, azure, local"
        )


def test_check_config_prints_what_the_file_resolves_to(tmp_path):
    (tmp_path / "earmark.toml").write_text(
        '[providers.fast]\nbase_url = "http://127.0.0.1:1/v1"\napi_key_env = "FAST_KEY"\n'
        '[providers.fast.models.whisper-1]\naliases = ["whisper"]\n'
        'price = { per_audio_minute = "0.006" }\nfallbacks = ["slow/whisper-1"]\n'
        '[providers.slow]\nbase_url = "http://127.0.0.1:2/v1"\n'
        '[providers.slow.models.whisper-1]\nprice = { per_audio_hour = "0.111", '
        'minimum_seconds = "10" }\n'
    )
    env = earmark_env(
        "sqlite+aiosqlite:///unused.db", EARMARK_CONFIG=str(tmp_path / "earmark.toml")
    )
    missing = run_cli(env, "check-config")
    assert missing.returncode != 0
    assert "FAST_KEY is not set" in missing.stderr
    result = run_cli({**env, "FAST_KEY": "sk-x"}, "check-config")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == [
        "provider fast (openai, http://127.0.0.1:1/v1)",
        "  model fast/whisper-1: per_audio_minute=0.006",
        "    aliases: whisper",
        "    fallbacks: slow/whisper-1",
        "provider slow (openai, http://127.0.0.1:2/v1)",
        "  model slow/whisper-1: per_audio_hour=0.111, minimum_seconds=10",
        "configuration OK",
    ]


def test_version():
    result = run_cli({}, "--version")
    assert result.returncode == 0
    assert result.stdout.startswith("earmark ")


def test_admin_commands_load_neither_the_web_framework_nor_the_http_client():
    """An admin command loads the services it runs, not Litestar or aiohttp (a third of
    the CLI's start, ~0.3 s a command): services raise ``app.errors``, which the web
    layer (``app.envelope``) answers, and webhook URLs are checked without aiohttp."""
    services = (
        "from app.access import keys, tenants, admin_users; from app.billing import budgets, "
        "usage, ledger; from app.ops import audit, webhooks; from app.storage import migrate"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys, app.cli; {services}; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "'app.ops.webhooks'" in loaded
    assert "'litestar'" not in loaded and "'aiohttp'" not in loaded


@pytest.mark.postgres
def test_a_missing_postgres_database_is_one_line_saying_what_to_do():
    env = earmark_env(postgres_database("earmark_no_such_database"))
    for command in (["migrate"], ["serve", "--port", "1"], ["keys", "list"]):
        result = run_cli(env, *command)
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        assert 'database "earmark_no_such_database" does not exist' in result.stderr
        assert "earmark migrate" in result.stderr


def test_migrate_says_which_revisions_it_applied(tmp_path):
    env = earmark_env(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    first = run_cli(env, "migrate")
    assert first.returncode == 0, first.stderr
    assert "upgraded from (empty) to" in first.stderr
    assert "applied" in first.stderr
    again = run_cli(env, "migrate")
    assert "nothing to apply" in again.stderr


def test_a_key_for_a_model_the_gateway_does_not_serve_is_refused(database_url):
    env = earmark_env(database_url)  # the built-in configuration: local/pocketsphinx
    tenant = _json(env, "tenants", "create", "acme")
    args = ["keys", "create", "--tenant", tenant["id"], "--name", "k"]
    refused = run_cli(env, *args, "--allow-model", "pocketsphinx", "--allow-model", "nope-model")
    assert refused.returncode != 0
    assert "allowed_models[1]: 'nope-model' is not a model on this gateway" in refused.stderr
    assert _json(env, *args, "--allow-model", "local/pocketsphinx")["allowed_models"] == [
        "local/pocketsphinx"
    ]


def test_serve_says_what_it_serves_and_logs_requests_without_secrets(tmp_path):
    import httpx

    env = earmark_env(
        f"sqlite+aiosqlite:///{tmp_path / 's.db'}", EARMARK_ADMIN_TOKEN="a-long-admin-token-1234"
    )
    log = tmp_path / "serve.log"
    with serving(env, log, "--access-log") as base:
        secret = "sk-bf-" + "x" * 49
        httpx.get(f"{base}/v1/models?api_key={secret}", headers={"x-api-key": secret})
        httpx.get(f"{base}/healthz")
    text = log.read_text()
    (summary,) = [line for line in text.splitlines() if "earmark.serve" in line]
    assert re.match(r"INFO - [\d-]+ [\d:,]+ - earmark.serve - cli - earmark \d", summary)
    # One format for uvicorn's lines too.
    assert "INFO:" not in text
    assert re.search(r"INFO - [\d-]+ [\d:,]+ - uvicorn.error - server - Started server", text)
    assert "(1 worker); database sqlite+aiosqlite:///" in summary
    assert "providers: local (1 model)" in summary
    assert "admin token: set" in summary and "a-long-admin-token" not in text
    assert "access log: on" in summary
    assert "console: /console" in summary
    access = [line for line in text.splitlines() if "GET /v1/models 401" in line]
    assert len(access) == 1, text
    assert re.search(r"GET /v1/models 401 [\d.]+ms req_\w+$", access[0]), access[0]
    assert "GET /healthz 200" in text
    assert secret not in text and "x" * 49 not in text


def test_the_cli_reaches_budgets_usage_calls_and_every_key_and_tenant_change(
    database_url, tmp_path
):
    (tmp_path / "earmark.toml").write_text(ADMIN_TEST_CONFIG)
    env = earmark_env(database_url, EARMARK_CONFIG=str(tmp_path / "earmark.toml"))
    tenant = _json(env, "tenants", "create", "acme")
    key = _json(env, "keys", "create", "--tenant", tenant["id"], "--name", "k")

    # Keys: rename, narrow, expire, widen again, delete.
    args = ["keys", "update", key["id"], "--name", "renamed", "--allow-model", "whisper"]
    updated = _json(env, *args, "--expires-at", "2099-01-01T00:00:00Z")
    assert (updated["name"], updated["allowed_models"]) == ("renamed", ["whisper"])
    assert updated["expires_at"].startswith("2099-01-01")
    widened = _json(env, "keys", "update", key["id"], "--all-models", "--no-expiry")
    assert (widened["allowed_models"], widened["expires_at"]) == (None, None)
    typo = run_cli(env, "keys", "update", key["id"], "--allow-model", "nope")
    assert typo.returncode != 0 and "'nope' is not a model" in typo.stderr

    # Budgets: add to the key and the tenant, raise, top up, reset, read back, delete.
    budget = _json(env, "budgets", "add", "--key", key["id"], "--limit-usd", "5", "--period", "day")
    assert (budget["owner"], budget["limit_usd"]) == ("key", "5.000000000")
    args = ["budgets", "add", "--tenant", tenant["id"], "--limit-usd", "50", "--period", "month"]
    assert _json(env, *args)["owner"] == "tenant"
    assert len(_json(env, "budgets", "list", "--tenant", tenant["id"])["data"]) == 1
    assert _json(env, "budgets", "set-limit", budget["id"], "7.5")["limit_usd"] == ("7.500000000")
    topped = _json(env, "budgets", "top-up", budget["id"], "1")
    assert topped["remaining_usd"] == "8.500000000"
    _json(env, "budgets", "reset", budget["id"])
    events = _json(env, "budgets", "events", budget["id"])["data"]
    assert {e["action"] for e in events} >= {"top_up", "reset"}
    assert all(e["actor"].startswith("cli") for e in events)
    assert len(_json(env, "budgets", "periods", budget["id"])["data"]) == 1
    bad = run_cli(env, "budgets", "top-up", budget["id"], "lots")
    assert bad.returncode != 0 and "amount_usd" in bad.stderr
    assert run_cli(env, "budgets", "delete", budget["id"]).returncode == 0
    assert _json(env, "budgets", "list", "--key", key["id"]) == {
        "data": [],
        "next_cursor": None,
    }

    # Reports: usage as JSON and CSV, calls (none yet), bad ranges named.
    report = _json(env, "usage", "--group-by", "tenant,month")
    assert report["data"] == []
    csv = run_cli(env, "usage", "--group-by", "tenant", "--format", "csv")
    assert csv.returncode == 0 and csv.stdout.startswith("tenant")
    reversed_range = run_cli(
        env, "usage", "--from", "2026-02-01T00:00:00Z", "--to", "2026-01-01T00:00:00Z"
    )
    assert reversed_range.returncode != 0 and "`to` must be after `from`" in reversed_range.stderr
    assert _json(env, "calls", "--key", key["id"])["data"] == []

    # Tenants: rename, deactivate (its keys are refused), activate; then delete the key.
    assert _json(env, "tenants", "update", tenant["id"], "--name", "acme2")["name"] == ("acme2")
    assert _json(env, "tenants", "deactivate", tenant["id"])["status"] == "inactive"
    assert _json(env, "tenants", "activate", tenant["id"])["status"] == "active"
    assert _json(env, "tenants", "show", tenant["id"])["name"] == "acme2"
    assert run_cli(env, "keys", "delete", key["id"]).returncode == 0
    assert "no key" in run_cli(env, "keys", "show", key["id"]).stderr


def test_a_person_reads_tables_and_fields_a_script_reads_json(tmp_path):
    """Tables by default, pages by --cursor or --all, every option of a key reachable.
    (Printing does not depend on the database: SQLite only, to keep the suite short.)"""
    (tmp_path / "earmark.toml").write_text(ADMIN_TEST_CONFIG)
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'earmark.db'}"
    env = earmark_env(database_url, EARMARK_CONFIG=str(tmp_path / "earmark.toml"))
    assert run_cli(env, "migrate").returncode == 0
    names = ["first", "second", "third"]
    ids = [_json(env, "tenants", "create", name)["id"] for name in names]

    shown = run_cli(env, "tenants", "show", ids[0])
    assert shown.returncode == 0 and shown.stderr == ""
    assert [line.split(None, 1) for line in shown.stdout.splitlines()][:3] == [
        ["id", ids[0]],
        ["name", "first"],
        ["status", "active"],
    ]
    table = run_cli(env, "tenants", "list", "--limit", "2")
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "STATUS", "CREATED_AT"]
    assert [row.split()[:2] for row in rows] == [[ids[2], "third"], [ids[1], "second"]]
    cursor = re.search(r"--cursor (\S+)", table.stderr)[1]
    rest = _json(env, "tenants", "list", "--limit", "2", "--cursor", cursor)
    assert [t["id"] for t in rest["data"]] == [ids[0]] and rest["next_cursor"] is None
    every = _json(env, "tenants", "list", "--all", "--limit", "1")
    assert [t["id"] for t in every["data"]] == ids[::-1] and every["next_cursor"] is None

    created = run_cli(
        env,
        *("keys", "create", "--tenant", ids[0], "--name", "limited", "--no-cache"),
        *("--requests-per-minute", "60", "--max-concurrent", "2"),
        *("--allow-model", "later-model", "--allow-unknown-models"),
    )
    assert created.returncode == 0, created.stderr
    fields = dict(line.split(None, 1) for line in created.stdout.splitlines() if line.strip())
    assert fields["secret"].startswith("sk-bf-") and "shown only now" in created.stderr
    assert fields["rate_limits"] == "requests_per_minute=60, window_seconds=3600, max_concurrent=2"
    assert (fields["cache"], fields["allowed_models"], fields["expires_at"]) == (
        "no",
        "later-model",
        "never",
    )
    key_id = fields["id"]
    # One limit changed, the others kept; contradictions refused, not guessed at.
    updated = _json(env, "keys", "update", key_id, "--max-concurrent", "5")
    assert updated["rate_limits"] == {
        "requests_per_minute": 60,
        "audio_seconds_per_window": None,
        "window_seconds": 3600,
        "max_concurrent": 5,
    }
    both = run_cli(env, "keys", "update", key_id, "--no-rate-limits", "--max-concurrent", "7")
    assert both.returncode != 0 and "contradict" in both.stderr
    updated = _json(env, "keys", "update", key_id, "--no-rate-limits", "--cache")
    assert (updated["rate_limits"], updated["cache"]) == (None, True)
    refused = run_cli(env, "keys", "update", key_id, "--allow-model", "later-model")
    assert refused.returncode != 0 and "allow_unknown_models" in refused.stderr

    keys_table = run_cli(env, "keys", "list", "--all").stdout.splitlines()
    assert keys_table[1].split()[:2] == [key_id, "limited"]
    report = run_cli(env, "usage", "--group-by", "tenant").stdout.splitlines()
    assert report[0].split()[:3] == ["TENANT", "TENANT_NAME", "CALLS"]
    assert report[1].split()[:2] == ["TOTAL", "0"]  # no calls yet

    # What a person reads is never obeyed by their terminal; pages are sized sanely.
    labels = '{"note": "line\\nbreak \\u001b[31mred\\u0007"}'
    odd = run_cli(env, "tenants", "create", "odd", "--metadata", labels)
    assert "\x1b" not in odd.stdout and "\x07" not in odd.stdout
    assert "note=line\\nbreak \\x1b[31mred\\x07" in odd.stdout
    for limit in ("0", "-5", "201", "x"):
        refused = run_cli(env, "tenants", "list", "--limit", limit)
        assert refused.returncode == 2 and "a page holds 1 to 200 rows" in refused.stderr
    assert "not a next_cursor" in run_cli(env, "calls", "--cursor", "not a cursor!").stderr


def _commands(parser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))
    yield path, parser


def test_every_option_of_every_command_says_what_it_is():
    for path, parser in _commands(build_parser()):
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"earmark {' '.join(path)} {action.dest}: no help"
        if path and parser._subparsers is None:  # a command that runs
            text = parser.format_help()
            assert "``" not in text and ":class:" not in text, text  # no reST
