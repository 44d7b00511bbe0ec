"""The ``earmark`` command: serve, migrate, and the admin operations of the HTTP API.

CLI commands call the same service functions as the admin API and validate their input
with the same msgspec types, so both paths accept and refuse the same things.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from sqlalchemy import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from app import __version__, admin_users, budgets, keys, ledger, migrate, tenants, usage
from app.catalog import Catalog
from app.config import ConfigError, load_config, provider_api_keys
from app.database import create_engine
from app.errors import EarmarkError
from app.pagination import MAX_LIMIT
from app.schemas import (
    BudgetCreate,
    BudgetUpdate,
    KeyCreate,
    KeyUpdate,
    TenantCreate,
    TenantUpdate,
    TopUp,
)
from app.settings import MULTIPROC_ENV, Settings, SettingsError, load_settings


def _print(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value)).decode() + "\n")


def _run(settings: Settings, work: Callable[[AsyncEngine], Awaitable[Any]]) -> None:
    async def main() -> Any:
        engine = create_engine(settings.database_url)
        try:
            await migrate.ensure_at_head(engine, migrate.head_revision())
            return await work(engine)
        finally:
            await engine.dispose()

    result = asyncio.run(main())
    if result is not None:
        _print(result)


def _catalog(settings: Settings) -> Catalog:
    """The configuration as the gateway would load it: a mistake is a ``ConfigError``
    naming the file and the entry, before any worker starts."""
    config = load_config(settings.config_path)
    catalog = Catalog(config)
    provider_api_keys(config)
    return catalog


def _serve(settings: Settings, args: argparse.Namespace) -> None:
    catalog = _catalog(settings)
    if settings.is_sqlite:
        # The embedded default migrates itself; PostgreSQL waits for `earmark migrate`.
        migrate.upgrade(settings.database_url)
    else:
        _run(settings, lambda engine: asyncio.sleep(0))  # reachable, and at head
    if args.access_log:
        os.environ["EARMARK_ACCESS_LOG"] = "true"  # read by each worker's settings
    summary = _summary(settings, catalog, args)
    # Every worker writes its metrics to files here and each scrape sums them; the
    # variable must be set before prometheus_client is first imported, hence here.
    metrics_dir = os.environ.get(MULTIPROC_ENV)
    own_dir = not metrics_dir
    if own_dir:
        metrics_dir = os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="earmark-metrics-")
    else:
        _empty_metrics_dir(metrics_dir)
    try:
        _run_uvicorn(args, summary)
    finally:
        if own_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _summary(settings: Settings, catalog: Catalog, args: argparse.Namespace) -> str:
    """What is about to serve, in one line (no secret)."""
    models: dict[str, int] = {}
    for route in catalog.routes.values():
        models[route.provider_name] = models.get(route.provider_name, 0) + 1
    providers = ", ".join(
        f"{name} ({n} model{'' if n == 1 else 's'})" for name, n in models.items()
    )
    url = make_url(settings.database_url).render_as_string(hide_password=True)
    workers = f"{args.workers} worker{'' if args.workers == 1 else 's'}"
    return (
        f"earmark {__version__} on http://{args.host}:{args.port} ({workers}); database {url}; "
        f"providers: {providers or 'none'}; config: {settings.config_path or 'built-in'}; "
        f"admin token: {'set' if settings.admin_token else 'not set (admin users only)'}; "
        f"metrics: /metrics, summed over workers; access log: "
        f"{'on' if args.access_log or settings.access_log else 'off'}"
    )


def _empty_metrics_dir(directory: str) -> None:
    """Samples left by an earlier run would be added to this one's."""
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if name.endswith(".db"):
            os.remove(os.path.join(directory, name))


def _run_uvicorn(args: argparse.Namespace, summary: str) -> None:
    import logging.config

    from app import server  # imports uvicorn, after the metrics directory is set

    logging.config.dictConfig(server.log_config(args.log_level))
    logging.getLogger("earmark.serve").info(summary)
    server.run(args.host, args.port, args.workers, args.log_level)


def _migrate(settings: Settings, _: argparse.Namespace) -> None:
    async def revision() -> str | None:
        engine = create_engine(settings.database_url)
        try:
            return await migrate.current_revision(engine)
        finally:
            await engine.dispose()

    before = asyncio.run(revision())
    migrate.upgrade(settings.database_url)
    head = migrate.head_revision()
    if before == head:
        print(f"database already at revision {head}: nothing to apply", file=sys.stderr)
        return
    applied = migrate.revisions_between(before, head)
    print(
        f"database upgraded from {before or '(empty)'} to {head}: applied " + ", ".join(applied),
        file=sys.stderr,
    )


def _check_config(settings: Settings, _: argparse.Namespace) -> None:
    """Validate the configuration and print what it resolves to: the providers, each
    model's canonical name, aliases, fallbacks and price."""
    catalog = _catalog(settings)
    print(f"configuration: {settings.config_path or 'built-in (the local engine)'}")
    providers: dict[str, list[str]] = {}
    for route in catalog.routes.values():
        providers.setdefault(route.provider_name, []).append(route.name)
    for provider_name, names in providers.items():
        provider = catalog.routes[names[0]].provider
        where = provider.base_url or "on this machine"
        print(f"provider {provider_name} ({provider.kind}, {where})")
        for name in names:
            route = catalog.routes[name]
            price = {k: str(v) for k, v in msgspec.structs.asdict(route.config.price).items()}
            shown = ", ".join(
                f"{k}={v}"
                for k, v in price.items()
                if k in _PRICE_FIELDS and v not in ("None", "0")
            )
            print(f"  model {name}: {shown or 'free'}")
            if route.config.aliases:
                print(f"    aliases: {', '.join(route.config.aliases)}")
            if catalog.fallbacks[name]:
                print(f"    fallbacks: {', '.join(r.name for r in catalog.fallbacks[name])}")
    print("configuration OK")


_PRICE_FIELDS = (
    "per_audio_second",
    "per_audio_minute",
    "per_audio_hour",
    "minimum_seconds",
    "input_text_per_million",
    "input_audio_per_million",
    "output_per_million",
)


def _database_problem(settings: Settings, error: Exception) -> str:
    """One line: which database (without its password), what went wrong, what to do."""
    url = make_url(settings.database_url).render_as_string(hide_password=True)
    cause = getattr(error, "orig", None) or error
    reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    hint = (
        "create it (e.g. `createdb`), then run `earmark migrate`"
        if "does not exist" in reason
        else "check that the server is running and EARMARK_DATABASE_URL is right"
    )
    return f"cannot use the database {url}: {reason}; {hint}"


def _tenants_create(settings: Settings, args: argparse.Namespace) -> None:
    data = msgspec.convert({"name": args.name, "metadata": args.metadata or {}}, TenantCreate)
    _run(settings, lambda engine: tenants.create_tenant(engine, data))


def _tenants_list(settings: Settings, args: argparse.Namespace) -> None:
    _run(
        settings,
        lambda engine: tenants.list_tenants(
            engine, status=args.status, limit=args.limit, cursor=None
        ),
    )


def _keys_create(settings: Settings, args: argparse.Namespace) -> None:
    body = {
        "tenant_id": args.tenant,
        "name": args.name,
        "metadata": args.metadata or {},
        "expires_at": args.expires_at,
        "allowed_models": args.allow_model,
    }
    data = msgspec.convert(body, KeyCreate, strict=False)
    _catalog(settings).check_known(data.allowed_models)
    actor = _actor()
    _run(settings, lambda engine: keys.create_key(engine, settings.key_pepper, data, actor=actor))


def _keys_list(settings: Settings, args: argparse.Namespace) -> None:
    _run(
        settings,
        lambda engine: keys.list_keys(
            engine, tenant_id=args.tenant, status=args.status, limit=args.limit, cursor=None
        ),
    )


def _keys_show(settings: Settings, args: argparse.Namespace) -> None:
    _run(settings, lambda engine: keys.get_key(engine, args.key_id))


def _keys_revoke(settings: Settings, args: argparse.Namespace) -> None:
    _run(settings, lambda engine: keys.revoke_key(engine, args.key_id))


def _keys_rotate(settings: Settings, args: argparse.Namespace) -> None:
    _run(
        settings,
        lambda engine: keys.rotate_key(
            engine, settings.key_pepper, args.key_id, args.grace_seconds
        ),
    )


def _actor() -> str:
    """Who made a change from the CLI, for the budget's audit trail."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _convert(body: dict[str, Any], kind: type, **cleared: Any) -> Any:
    """The body as the admin API's type would take it: the same checks, the same errors.
    Options not given (None) are left out; ``cleared`` fields are sent even when None
    (``null`` clears them)."""
    given = {k: v for k, v in body.items() if v is not None}
    return msgspec.convert({**given, **cleared}, kind, strict=False)


def _tenants_show(settings: Settings, args: argparse.Namespace) -> None:
    _run(settings, lambda engine: tenants.get_tenant(engine, args.tenant_id))


def _tenants_update(settings: Settings, args: argparse.Namespace) -> None:
    status = {"deactivate": "inactive", "activate": "active"}.get(args.action)
    body = {"name": getattr(args, "name", None), "metadata": getattr(args, "metadata", None)}
    data = _convert({**body, "status": status}, TenantUpdate)
    _run(settings, lambda engine: tenants.update_tenant(engine, args.tenant_id, data))


def _keys_update(settings: Settings, args: argparse.Namespace) -> None:
    cleared: dict[str, Any] = {}
    if args.no_expiry or args.expires_at:
        cleared["expires_at"] = args.expires_at
    if args.all_models or args.allow_model:
        cleared["allowed_models"] = args.allow_model
        _catalog(settings).check_known(args.allow_model)
    data = _convert({"name": args.name, "metadata": args.metadata}, KeyUpdate, **cleared)
    _run(settings, lambda engine: keys.update_key(engine, args.key_id, data))


def _keys_delete(settings: Settings, args: argparse.Namespace) -> None:
    _run(settings, lambda engine: keys.delete_key(engine, args.key_id))


def _calls(settings: Settings, args: argparse.Namespace) -> None:
    _run(
        settings,
        lambda engine: ledger.list_calls(
            engine,
            args.limit,
            args.cursor,
            key_id=args.key,
            tenant_id=args.tenant,
            review=args.review,
        ),
    )


def _budgets(settings: Settings, args: argparse.Namespace) -> None:
    actor, budget_id = _actor(), getattr(args, "budget_id", None)
    action = {
        "add": lambda engine: budgets.create_budget(
            engine,
            _convert({"limit_usd": args.limit_usd, "period": args.period}, BudgetCreate),
            actor,
            key_id=args.key,
            tenant_id=args.tenant,
        ),
        "list": lambda engine: _listed(
            budgets.list_budgets(engine, key_id=args.key, tenant_id=args.tenant)
        ),
        "show": lambda engine: budgets.get_budget(engine, budget_id),
        "set-limit": lambda engine: budgets.update_budget(
            engine, budget_id, _convert({"limit_usd": args.usd}, BudgetUpdate), actor
        ),
        "top-up": lambda engine: budgets.top_up(
            engine, budget_id, _convert({"amount_usd": args.usd}, TopUp).amount_usd, actor
        ),
        "reset": lambda engine: budgets.reset(engine, budget_id, actor),
        "delete": lambda engine: budgets.delete_budget(engine, budget_id, actor),
        "periods": lambda engine: _listed(budgets.periods(engine, budget_id)),
        "events": lambda engine: _listed(budgets.events(engine, budget_id)),
    }[args.action]
    _run(settings, action)


async def _listed(items: Awaitable[list[Any]]) -> dict[str, Any]:
    """A whole list in the API's one shape, ``{data, next_cursor}``."""
    return {"data": await items, "next_cursor": None}


def _usage(settings: Settings, args: argparse.Namespace) -> None:
    groups = usage.parse_group_by(args.group_by)
    start, end = usage.parse_instant("from", args.start), usage.parse_instant("to", args.end)

    async def report(engine: AsyncEngine) -> Any:
        found = await usage.usage_report(engine, groups, start, end)
        if args.format == "csv":
            sys.stdout.write(usage.to_csv(found))
            return None
        return found

    _run(settings, report)


def _new_password(name: str) -> str:
    """From a prompt (twice) on a terminal, else the first line of stdin."""
    if sys.stdin.isatty():
        password = getpass.getpass(f"Password for {name}: ")
        if getpass.getpass("Repeat password: ") != password:
            raise EarmarkError("the passwords do not match")
        return password
    return sys.stdin.readline().rstrip("\r\n")


def _admin_create_user(settings: Settings, args: argparse.Namespace) -> None:
    password = _new_password(args.name)
    _run(settings, lambda engine: admin_users.create_admin_user(engine, args.name, password))


def _admin_users(settings: Settings, args: argparse.Namespace) -> None:
    if args.action == "set-password":
        password = _new_password(args.name)
        _run(settings, lambda engine: admin_users.set_password(engine, args.name, password))
    elif args.action == "delete-user":
        _run(settings, lambda engine: admin_users.delete_admin_user(engine, args.name))
    else:
        _run(settings, lambda engine: _listed(admin_users.list_admin_users(engine)))


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="earmark", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"earmark {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="serve the gateway",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on")
    serve.add_argument("--workers", type=int, default=1, help="worker processes")
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="least severe log level shown",
    )
    serve.add_argument(
        "--access-log",
        action="store_true",
        help="one line per request, never a secret (also EARMARK_ACCESS_LOG=true)",
    )
    serve.set_defaults(handler=_serve)

    commands.add_parser("migrate", help="upgrade the database to head").set_defaults(
        handler=_migrate
    )
    commands.add_parser(
        "check-config",
        help="validate EARMARK_CONFIG and print its providers, models, aliases and prices",
    ).set_defaults(handler=_check_config)

    tenant_commands = commands.add_parser("tenants", help="manage tenants").add_subparsers(
        dest="action", required=True
    )
    create = tenant_commands.add_parser("create", help="create a tenant")
    create.add_argument("name")
    create.add_argument("--metadata", type=_json_object, help="JSON object of labels")
    create.set_defaults(handler=_tenants_create)
    listing = tenant_commands.add_parser("list", help="list tenants, newest first")
    listing.add_argument("--status", choices=["active", "inactive"])
    listing.add_argument("--limit", type=int, default=MAX_LIMIT)
    listing.set_defaults(handler=_tenants_list)

    key_commands = commands.add_parser("keys", help="manage virtual keys").add_subparsers(
        dest="action", required=True
    )
    create = key_commands.add_parser("create", help="create a key and print its secret once")
    create.add_argument("--tenant", required=True, help="tenant id")
    create.add_argument("--name", required=True)
    create.add_argument("--expires-at", help="RFC 3339 time with offset")
    create.add_argument(
        "--allow-model", action="append", help="a model the key may use (repeatable)"
    )
    create.add_argument("--metadata", type=_json_object, help="JSON object of labels")
    create.set_defaults(handler=_keys_create)
    listing = key_commands.add_parser("list", help="list keys, newest first")
    listing.add_argument("--tenant", help="tenant id")
    listing.add_argument("--status", choices=["active", "expired", "revoked"])
    listing.add_argument("--limit", type=int, default=MAX_LIMIT)
    listing.set_defaults(handler=_keys_list)
    for action, handler, text in [
        ("show", _keys_show, "show a key (never its secret)"),
        ("revoke", _keys_revoke, "revoke a key, effective at once"),
        ("rotate", _keys_rotate, "issue a new secret for a key"),
    ]:
        sub = key_commands.add_parser(action, help=text)
        sub.add_argument("key_id")
        sub.set_defaults(handler=handler)
        if action == "rotate":
            sub.add_argument("--grace-seconds", type=int, default=0)

    sub = key_commands.add_parser("update", help="change a key's name, expiry, models or labels")
    sub.add_argument("key_id")
    sub.add_argument("--name", help="new name")
    sub.add_argument("--expires-at", help="RFC 3339 time with offset")
    sub.add_argument("--no-expiry", action="store_true", help="remove the expiry")
    sub.add_argument("--allow-model", action="append", help="the models it may use (repeatable)")
    sub.add_argument("--all-models", action="store_true", help="let it use every model")
    sub.add_argument("--metadata", type=_json_object, help="JSON object of labels")
    sub.set_defaults(handler=_keys_update)
    sub = key_commands.add_parser("delete", help="delete a key: refused from now on, history kept")
    sub.add_argument("key_id")
    sub.set_defaults(handler=_keys_delete)

    for action, text in [
        ("show", "show a tenant"),
        ("update", "rename a tenant or change its labels"),
        ("deactivate", "refuse every key of a tenant until it is activated"),
        ("activate", "let a tenant's keys call again"),
    ]:
        sub = tenant_commands.add_parser(action, help=text)
        sub.add_argument("tenant_id")
        if action == "update":
            sub.add_argument("--name", help="new name")
            sub.add_argument("--metadata", type=_json_object, help="JSON object of labels")
        sub.set_defaults(handler=_tenants_show if action == "show" else _tenants_update)

    budget_commands = commands.add_parser(
        "budgets", help="budgets on keys and tenants"
    ).add_subparsers(dest="action", required=True)
    sub = budget_commands.add_parser("add", help="add a budget to a key or a tenant")
    owner = sub.add_mutually_exclusive_group(required=True)
    owner.add_argument("--key", help="key id")
    owner.add_argument("--tenant", help="tenant id (the budget covers all its keys)")
    sub.add_argument("--limit-usd", required=True, help='the limit, exact: "25" or "2.50"')
    sub.add_argument("--period", required=True, choices=["day", "week", "month", "none"])
    sub.set_defaults(handler=_budgets)
    sub = budget_commands.add_parser("list", help="budgets of a key or a tenant")
    owner = sub.add_mutually_exclusive_group()
    owner.add_argument("--key", help="key id")
    owner.add_argument("--tenant", help="tenant id")
    sub.set_defaults(handler=_budgets)
    for action, text in [
        ("show", "a budget and its current period"),
        ("set-limit", "raise or lower its limit"),
        ("top-up", "grant extra spend for the current period"),
        ("reset", "zero the current period's spend"),
        ("delete", "stop enforcing it"),
        ("periods", "spend of every period, newest first"),
        ("events", "who changed it, and when"),
    ]:
        sub = budget_commands.add_parser(action, help=text)
        sub.add_argument("budget_id")
        if action in ("set-limit", "top-up"):
            sub.add_argument("usd", help='an exact amount in dollars: "10" or "0.50"')
        sub.set_defaults(handler=_budgets)

    report = commands.add_parser(
        "usage",
        help="calls, audio seconds, tokens and cost, grouped",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    report.add_argument(
        "--group-by", help="comma-separated: tenant, key, model, provider, day, month"
    )
    report.add_argument("--from", dest="start", help="RFC 3339 start (inclusive)")
    report.add_argument("--to", dest="end", help="RFC 3339 end (exclusive)")
    report.add_argument("--format", choices=["json", "csv"], default="json", help="output")
    report.set_defaults(handler=_usage)

    calls = commands.add_parser(
        "calls",
        help="ledger rows, newest first, with their upstream attempts",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    calls.add_argument("--key", help="only this key's calls")
    calls.add_argument("--tenant", help="only this tenant's calls")
    calls.add_argument("--review", action="store_true", help="only calls flagged for review")
    calls.add_argument("--limit", type=int, default=MAX_LIMIT, help="rows per page")
    calls.add_argument("--cursor", help="the next_cursor of the previous page")
    calls.set_defaults(handler=_calls)

    admin_commands = commands.add_parser("admin", help="manage admin users").add_subparsers(
        dest="action", required=True
    )
    user = admin_commands.add_parser(
        "create-user", help="create an admin user; the password is read from stdin or a prompt"
    )
    user.add_argument("name")
    user.set_defaults(handler=_admin_create_user)
    admin_commands.add_parser("list-users", help="list admin users").set_defaults(
        handler=_admin_users
    )
    for action, text in [
        ("set-password", "give an admin user a new password (stdin or a prompt)"),
        ("delete-user", "delete an admin user: refused from the next request"),
    ]:
        sub = admin_commands.add_parser(action, help=text)
        sub.add_argument("name")
        sub.set_defaults(handler=_admin_users)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        args.handler(settings, args)
    except (SettingsError, ConfigError, migrate.SchemaNotCurrent) as error:
        sys.exit(f"earmark: {error}")
    except (DBAPIError, OSError) as error:
        sys.exit(f"earmark: {_database_problem(settings, error)}")
    except EarmarkError as error:
        sys.exit(f"earmark: {error.message}")
    except msgspec.ValidationError as error:
        sys.exit(f"earmark: invalid input: {error}")
