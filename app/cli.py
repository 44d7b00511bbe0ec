"""The ``earmark`` command: serve, migrate, and the admin operations of the HTTP API.

CLI commands call the same service functions as the admin API and validate their input
with the same msgspec types, so both paths accept and refuse the same things.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, get_args

import msgspec

# Only what building the parser needs is imported here, so that `--help` and `--version`
# answer at once; each command imports the modules it uses when it runs.
from app import __version__
from app.ids import ID_MAX_LENGTH, ID_PATTERN
from app.pagination import MAX_LIMIT
from app.schemas import (
    BudgetCreate,
    BudgetUpdate,
    KeyCreate,
    KeyUpdate,
    TenantCreate,
    TenantUpdate,
    TopUp,
    WebhookCreate,
    WebhookEventType,
    WebhookUpdate,
)
from app.settings import MULTIPROC_ENV, Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from app.catalog import Catalog


def _run(settings: Settings, work: Callable[[AsyncEngine], Awaitable[Any]]) -> Any:
    import asyncio

    from app.storage import migrate
    from app.storage.database import create_engine

    async def main() -> Any:
        engine = create_engine(settings.database_url)
        try:
            await migrate.ensure_at_head(engine, migrate.head_revision())
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def _catalog(settings: Settings) -> Catalog:
    """The configuration as the gateway would load it: a mistake ends the command with
    the ``ConfigError``, which names the file and the entry, before any worker starts."""
    from app.catalog import Catalog
    from app.config import ConfigError, load_config, provider_api_keys

    # Caught here rather than in main(), so that the commands that never read the
    # configuration need not import it (and the audio decoders it brings) to name its error.
    try:
        config = load_config(settings.config_path)
        catalog = Catalog(config)
        provider_api_keys(config)
    except ConfigError as error:
        sys.exit(f"earmark: {error}")
    return catalog


def _serve(settings: Settings, args: argparse.Namespace) -> None:
    import asyncio

    from app.storage import migrate

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
    from sqlalchemy import make_url

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
        f"console: /console; metrics: /metrics, summed over workers; access log: "
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

    from app.runtime import server  # imports uvicorn, after the metrics directory is set

    logging.config.dictConfig(server.log_config(args.log_level))
    logging.getLogger("earmark.serve").info(summary)
    server.run(args.host, args.port, args.workers, args.log_level)


def _migrate(settings: Settings, _: argparse.Namespace) -> None:
    import asyncio

    from app.storage import migrate
    from app.storage.database import create_engine

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
    from sqlalchemy import make_url

    url = make_url(settings.database_url).render_as_string(hide_password=True)
    cause = getattr(error, "orig", None) or error
    reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    hint = (
        "create it (e.g. `createdb`), then run `earmark migrate`"
        if "does not exist" in reason
        else "check that the server is running and EARMARK_DATABASE_URL is right"
    )
    return f"cannot use the database {url}: {reason}; {hint}"


def _tenants_create(settings: Settings, args: argparse.Namespace) -> Any:
    from app.access import tenants
    from app.ops.audit import cli_actor

    data = msgspec.convert({"name": args.name, "metadata": args.metadata or {}}, TenantCreate)
    return _run(settings, lambda engine: tenants.create_tenant(engine, data, cli_actor()))


def _tenants_list(settings: Settings, args: argparse.Namespace) -> Any:
    from app.access import tenants

    return _pages(
        settings,
        args,
        lambda engine, limit, cursor: tenants.list_tenants(
            engine, status=args.status, limit=limit, cursor=cursor
        ),
    )


def _pages(
    settings: Settings,
    args: argparse.Namespace,
    fetch: Callable[[AsyncEngine, int, str | None], Awaitable[Any]],
) -> Any:
    """The page ``--cursor`` names, or with ``--all`` every page joined into one list."""

    async def pages(engine: AsyncEngine) -> Any:
        if not args.all:
            return await fetch(engine, args.limit, args.cursor)
        rows: list[Any] = []
        cursor = args.cursor
        while True:
            page = await fetch(engine, MAX_LIMIT, cursor)
            rows += page.data
            cursor = page.next_cursor
            if cursor is None:
                return {"data": rows, "next_cursor": None}

    return _run(settings, pages)


def _keys_create(settings: Settings, args: argparse.Namespace) -> Any:
    from app.access import keys
    from app.ops.audit import cli_actor

    body = {
        "tenant_id": args.tenant,
        "name": args.name,
        "metadata": args.metadata or {},
        "expires_at": args.expires_at,
        "allowed_models": args.allow_model,
        "rate_limits": _rate_limits(args),
        "cache": args.cache,
    }
    data = _convert(body, KeyCreate)
    if not args.allow_unknown_models:
        _catalog(settings).check_known(data.allowed_models)
    return _run(
        settings, lambda engine: keys.create_key(engine, settings.key_pepper, data, cli_actor())
    )


def _rate_limits(args: argparse.Namespace) -> dict[str, int] | None:
    limits = {
        "requests_per_minute": args.requests_per_minute,
        "audio_seconds_per_window": args.audio_seconds_per_window,
        "window_seconds": args.window_seconds,
        "max_concurrent": args.max_concurrent,
    }
    given = {name: value for name, value in limits.items() if value is not None}
    return given or None


def _keys_list(settings: Settings, args: argparse.Namespace) -> Any:
    from app.access import keys

    return _pages(
        settings,
        args,
        lambda engine, limit, cursor: keys.list_keys(
            engine, tenant_id=args.tenant, status=args.status, limit=limit, cursor=cursor
        ),
    )


def _keys_show(settings: Settings, args: argparse.Namespace) -> Any:
    from app.access import keys

    return _run(settings, lambda engine: keys.get_key(engine, args.key_id))


def _keys_revoke(settings: Settings, args: argparse.Namespace) -> Any:
    from app.access import keys
    from app.ops.audit import cli_actor

    return _run(settings, lambda engine: keys.revoke_key(engine, args.key_id, cli_actor()))


def _keys_rotate(settings: Settings, args: argparse.Namespace) -> Any:
    from app.access import keys
    from app.ops.audit import cli_actor

    return _run(
        settings,
        lambda engine: keys.rotate_key(
            engine, settings.key_pepper, args.key_id, args.grace_seconds, cli_actor()
        ),
    )


def _convert(body: dict[str, Any], kind: type, **cleared: Any) -> Any:
    """The body as the admin API's type would take it: the same checks, the same errors.
    Options not given (None) are left out; ``cleared`` fields are sent even when None
    (``null`` clears them)."""
    given = {k: v for k, v in body.items() if v is not None}
    return msgspec.convert({**given, **cleared}, kind, strict=False)


def _tenants_show(settings: Settings, args: argparse.Namespace) -> Any:
    from app.access import tenants

    return _run(settings, lambda engine: tenants.get_tenant(engine, args.tenant_id))


def _tenants_update(settings: Settings, args: argparse.Namespace) -> Any:
    from app.access import tenants
    from app.ops.audit import cli_actor

    status = {"deactivate": "inactive", "activate": "active"}.get(args.action)
    body = {"name": getattr(args, "name", None), "metadata": getattr(args, "metadata", None)}
    data = _convert({**body, "status": status}, TenantUpdate)
    return _run(
        settings, lambda engine: tenants.update_tenant(engine, args.tenant_id, data, cli_actor())
    )


def _refuse_contradictions(*pairs: tuple[str, Any, str, Any]) -> None:
    """Each pair is two options and what was given for each: both given is an error."""
    from app.errors import EarmarkError

    for first, first_given, second, second_given in pairs:
        if first_given and second_given:
            raise EarmarkError(f"{first} and {second} contradict each other: give one")


def _keys_update(settings: Settings, args: argparse.Namespace) -> Any:
    from app.access import keys
    from app.ops.audit import cli_actor

    limits = _rate_limits(args)
    _refuse_contradictions(
        ("--no-expiry", args.no_expiry, "--expires-at", args.expires_at),
        ("--all-models", args.all_models, "--allow-model", args.allow_model),
        ("--no-rate-limits", args.no_rate_limits, "a rate-limit option", limits),
    )
    cleared: dict[str, Any] = {}
    if args.no_expiry or args.expires_at:
        cleared["expires_at"] = args.expires_at
    if args.all_models or args.allow_model:
        cleared["allowed_models"] = args.allow_model
        if not args.allow_unknown_models:
            _catalog(settings).check_known(args.allow_model)
    if args.no_rate_limits:
        cleared["rate_limits"] = None
    body = {"name": args.name, "metadata": args.metadata, "cache": args.cache}

    async def update(engine: AsyncEngine) -> Any:
        if limits:  # the options given change those limits; the others stay as they are
            current = (await keys.get_key(engine, args.key_id)).rate_limits
            kept = msgspec.structs.asdict(current) if current else {}
            cleared["rate_limits"] = {**kept, **limits}
        data = _convert(body, KeyUpdate, **cleared)
        return await keys.update_key(engine, args.key_id, data, cli_actor())

    return _run(settings, update)


def _keys_delete(settings: Settings, args: argparse.Namespace) -> Any:
    from app.access import keys
    from app.ops.audit import cli_actor

    return _run(settings, lambda engine: keys.delete_key(engine, args.key_id, cli_actor()))


def _calls(settings: Settings, args: argparse.Namespace) -> Any:
    from app.billing import ledger

    return _pages(
        settings,
        args,
        lambda engine, limit, cursor: ledger.list_calls(
            engine, limit, cursor, key_id=args.key, tenant_id=args.tenant, review=args.review
        ),
    )


def _audit(settings: Settings, args: argparse.Namespace) -> Any:
    from app.billing import usage
    from app.ops import audit

    filters = {
        "target": args.target,
        "actor": args.actor,
        "action": args.action,
        "start": usage.parse_instant("from", args.start),
        "end": usage.parse_instant("to", args.end),
    }
    if args.format == "csv":
        every = _run(
            settings, lambda engine: audit.every_entry(engine, **filters, cursor=args.cursor)
        )
        sys.stdout.write(audit.to_csv(every))
        return None
    return _pages(
        settings,
        args,
        lambda engine, limit, cursor: audit.list_entries(
            engine, **filters, limit=limit, cursor=cursor
        ),
    )


def _webhooks(settings: Settings, args: argparse.Namespace) -> Any:
    from app.ops import webhooks
    from app.ops.audit import cli_actor

    actor, webhook_id = cli_actor(), getattr(args, "webhook_id", None)
    allow_private = settings.webhooks.allow_private
    if args.action == "list":
        return _pages(
            settings,
            args,
            lambda engine, limit, cursor: webhooks.list_endpoints(
                engine, limit=limit, cursor=cursor
            ),
        )
    if args.action == "deliveries":
        return _pages(
            settings,
            args,
            lambda engine, limit, cursor: webhooks.list_deliveries(
                engine, webhook_id, limit=limit, cursor=cursor
            ),
        )
    if args.action == "create":
        body = {"url": args.url, "event_types": args.event, "tenant_id": args.tenant}
        data = _convert({**body, "enabled": not args.disabled}, WebhookCreate)
    elif args.action == "update":
        _refuse_contradictions(
            ("--tenant", args.tenant, "--all-tenants", args.all_tenants),
            ("--enable", args.enable, "--disable", args.disable),
        )
        enabled = True if args.enable else False if args.disable else None
        body = {"url": args.url, "event_types": args.event, "enabled": enabled}
        cleared = {"tenant_id": None} if args.all_tenants else {}
        data = _convert({**body, "tenant_id": args.tenant}, WebhookUpdate, **cleared)
    action = {
        "create": lambda engine: webhooks.create_endpoint(
            engine, data, actor, allow_private=allow_private
        ),
        "show": lambda engine: webhooks.get_endpoint(engine, webhook_id),
        "update": lambda engine: webhooks.update_endpoint(
            engine, webhook_id, data, actor, allow_private=allow_private
        ),
        "delete": lambda engine: webhooks.delete_endpoint(engine, webhook_id, actor),
        "rotate-secret": lambda engine: webhooks.rotate_secret(engine, webhook_id, actor),
        "redeliver": lambda engine: webhooks.redeliver(engine, webhook_id, args.delivery_id, actor),
    }[args.action]
    return _run(settings, action)


def _budgets(settings: Settings, args: argparse.Namespace) -> Any:
    from app.billing import budgets
    from app.ops.audit import cli_actor

    actor, budget_id = cli_actor(), getattr(args, "budget_id", None)
    action = {
        "add": lambda engine: budgets.create_budget(
            engine,
            _convert(
                {"limit_usd": args.limit_usd, "period": args.period, "thresholds": args.threshold},
                BudgetCreate,
            ),
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
        "set-thresholds": lambda engine: budgets.update_budget(
            engine, budget_id, _convert({"thresholds": args.percent}, BudgetUpdate), actor
        ),
        "top-up": lambda engine: budgets.top_up(
            engine, budget_id, _convert({"amount_usd": args.usd}, TopUp).amount_usd, actor
        ),
        "reset": lambda engine: budgets.reset(engine, budget_id, actor),
        "delete": lambda engine: budgets.delete_budget(engine, budget_id, actor),
        "periods": lambda engine: _listed(budgets.periods(engine, budget_id)),
        "events": lambda engine: _listed(budgets.events(engine, budget_id)),
    }[args.action]
    return _run(settings, action)


async def _listed(items: Awaitable[list[Any]]) -> dict[str, Any]:
    """A whole list in the API's one shape, ``{data, next_cursor}``."""
    return {"data": await items, "next_cursor": None}


def _usage(settings: Settings, args: argparse.Namespace) -> Any:
    from app.billing import usage

    groups = usage.parse_group_by(args.group_by)
    start, end = usage.parse_instant("from", args.start), usage.parse_instant("to", args.end)

    async def report(engine: AsyncEngine) -> Any:
        found = await usage.usage_report(engine, groups, start, end)
        if args.format == "csv":
            sys.stdout.write(usage.to_csv(found))
            return None
        return found

    return _run(settings, report)


def _new_password(name: str) -> str:
    """From a prompt (twice) on a terminal, else the first line of stdin."""
    from app.errors import EarmarkError

    if sys.stdin.isatty():
        password = getpass.getpass(f"Password for {name}: ")
        if getpass.getpass("Repeat password: ") != password:
            raise EarmarkError("the passwords do not match")
        return password
    return sys.stdin.readline().rstrip("\r\n")


def _admin_create_user(settings: Settings, args: argparse.Namespace) -> Any:
    from app.access import admin_users
    from app.ops.audit import cli_actor

    password = _new_password(args.name)
    return _run(
        settings,
        lambda engine: admin_users.create_admin_user(engine, args.name, password, cli_actor()),
    )


def _admin_users(settings: Settings, args: argparse.Namespace) -> Any:
    from app.access import admin_users
    from app.ops.audit import cli_actor

    if args.action == "set-password":
        password = _new_password(args.name)
        return _run(
            settings,
            lambda engine: admin_users.set_password(engine, args.name, password, cli_actor()),
        )
    elif args.action == "delete-user":
        return _run(
            settings, lambda engine: admin_users.delete_admin_user(engine, args.name, cli_actor())
        )
    else:
        return _run(settings, lambda engine: _listed(admin_users.list_admin_users(engine)))


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


# The columns of each list, as a person reads it; --json prints every field.
_TENANT_COLUMNS = ("id", "name", "status", "created_at")
_KEY_COLUMNS = (
    *("id", "name", "tenant_id", "display_prefix", "status"),
    *("allowed_models", "expires_at", "created_at"),
)
_CALL_COLUMNS = (
    *("id", "created_at", "key_id", "model_requested", "status", "http_status"),
    *("audio_ms", "cost_usd", "review"),
)
_BUDGET_COLUMNS = (
    *("id", "owner", "key_id", "tenant_id", "period", "limit_usd", "spent_usd"),
    *("held_usd", "remaining_usd", "period_end"),
)
_PERIOD_COLUMNS = ("period_start", "spent_usd", "held_usd", "top_up_usd")
_EVENT_COLUMNS = ("created_at", "action", "actor", "details")
_AUDIT_COLUMNS = ("created_at", "actor", "action", "target_id", "before", "after")
_WEBHOOK_COLUMNS = ("id", "url", "event_types", "tenant_id", "enabled", "failing")
_DELIVERY_COLUMNS = (
    *("id", "event_type", "status", "attempts", "last_status", "last_error"),
    "next_attempt_at",
)
_EVENT_TYPES = list(get_args(WebhookEventType))
_USER_COLUMNS = ("id", "name", "created_at")


def _output() -> argparse.ArgumentParser:
    """The options every command that prints something shares."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--json", action="store_true", help="print the admin API's JSON instead of a table"
    )
    return parser


def _page_size(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"a page holds 1 to {MAX_LIMIT} rows, not {text!r}")
    return int(text)


def _cursor(text: str) -> str:
    if not re.fullmatch(ID_PATTERN, text) or len(text) > ID_MAX_LENGTH:
        raise argparse.ArgumentTypeError(f"{text!r} is not a next_cursor this CLI printed")
    return text


def _paged(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=_page_size, default=MAX_LIMIT, help="rows per page")
    parser.add_argument(
        "--cursor", type=_cursor, help="the page after this one (a list's next_cursor)"
    )
    parser.add_argument("--all", action="store_true", help="every page, as one list")


def _time_range_and_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="start", help="RFC 3339 start (inclusive)")
    parser.add_argument("--to", dest="end", help="RFC 3339 end (exclusive)")
    parser.add_argument(
        "--format", choices=["table", "csv"], default="table", help="output (or --json)"
    )


def _key_options(parser: argparse.ArgumentParser) -> None:
    """What a key may do, as ``keys create`` and ``keys update`` take it."""
    parser.add_argument("--expires-at", help="RFC 3339 time with offset")
    parser.add_argument(
        "--allow-model", action="append", help="a model the key may use (repeatable)"
    )
    parser.add_argument(
        "--allow-unknown-models",
        action="store_true",
        help="accept --allow-model names this gateway does not serve (yet)",
    )
    parser.add_argument("--requests-per-minute", type=int, help="rate limit: calls a minute")
    parser.add_argument(
        "--audio-seconds-per-window", type=int, help="rate limit: audio seconds per window"
    )
    parser.add_argument(
        "--window-seconds", type=int, help="the audio-seconds window (default 3600)"
    )
    parser.add_argument("--max-concurrent", type=int, help="rate limit: calls in flight")
    parser.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        help="answer repeated uploads from the cache where the model has one (default: yes)",
    )
    parser.add_argument("--metadata", type=_json_object, help="JSON object of labels")


class _Defaults(argparse.HelpFormatter):
    """Every option's help ends with its default, where it has one worth saying."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help = action.help or ""
        unsaid = action.default is None or action.default is False
        if not unsaid and action.default is not argparse.SUPPRESS and action.option_strings:
            help += " (default: %(default)s)"
        return help


class _Parser(argparse.ArgumentParser):
    """Each subcommand's parser is one of these too (argparse makes them of the type of
    the parser that holds them), so every ``--help`` shows defaults the same way."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Defaults)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="earmark", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"earmark {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    output = [_output()]

    serve = commands.add_parser(
        "serve",
        help="serve the gateway",
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
    create = tenant_commands.add_parser("create", help="create a tenant", parents=output)
    create.add_argument("name", help="unique, whatever its case")
    create.add_argument("--metadata", type=_json_object, help="JSON object of labels")
    create.set_defaults(handler=_tenants_create)
    listing = tenant_commands.add_parser("list", help="list tenants, newest first", parents=output)
    listing.add_argument("--status", choices=["active", "inactive"], help="only these")
    _paged(listing)
    listing.set_defaults(handler=_tenants_list, columns=_TENANT_COLUMNS)
    for action, text in [
        ("show", "show a tenant"),
        ("update", "rename a tenant or change its labels"),
        ("deactivate", "refuse every key of a tenant until it is activated"),
        ("activate", "let a tenant's keys call again"),
    ]:
        sub = tenant_commands.add_parser(action, help=text, parents=output)
        sub.add_argument("tenant_id", help="ten_… id")
        if action == "update":
            sub.add_argument("--name", help="new name")
            sub.add_argument("--metadata", type=_json_object, help="JSON object of labels")
        sub.set_defaults(handler=_tenants_show if action == "show" else _tenants_update)

    key_commands = commands.add_parser("keys", help="manage virtual keys").add_subparsers(
        dest="action", required=True
    )
    create = key_commands.add_parser(
        "create", help="create a key and print its secret once", parents=output
    )
    create.add_argument("--tenant", required=True, help="tenant id")
    create.add_argument("--name", required=True, help="a name for people (unique per tenant)")
    _key_options(create)
    create.set_defaults(handler=_keys_create)
    listing = key_commands.add_parser("list", help="list keys, newest first", parents=output)
    listing.add_argument("--tenant", help="tenant id")
    listing.add_argument("--status", choices=["active", "expired", "revoked"], help="only these")
    _paged(listing)
    listing.set_defaults(handler=_keys_list, columns=_KEY_COLUMNS)
    for action, handler, text in [
        ("show", _keys_show, "show a key (never its secret)"),
        ("revoke", _keys_revoke, "revoke a key, effective at once"),
        ("rotate", _keys_rotate, "issue a new secret for a key"),
        ("delete", _keys_delete, "delete a key: refused from now on, history kept"),
    ]:
        sub = key_commands.add_parser(action, help=text, parents=output)
        sub.add_argument("key_id", help="key_… id")
        sub.set_defaults(handler=handler)
        if action == "rotate":
            sub.add_argument(
                "--grace-seconds", type=int, default=0, help="how long the old secret still works"
            )
    sub = key_commands.add_parser(
        "update", help="change a key's name, expiry, models, limits or labels", parents=output
    )
    sub.add_argument("key_id", help="key_… id")
    sub.add_argument("--name", help="new name")
    sub.add_argument("--no-expiry", action="store_true", help="remove the expiry")
    sub.add_argument("--all-models", action="store_true", help="let it use every model")
    sub.add_argument("--no-rate-limits", action="store_true", help="remove its rate limits")
    _key_options(sub)
    sub.set_defaults(handler=_keys_update)

    budget_commands = commands.add_parser(
        "budgets", help="budgets on keys and tenants"
    ).add_subparsers(dest="action", required=True)
    sub = budget_commands.add_parser(
        "add", help="add a budget to a key or a tenant", parents=output
    )
    owner = sub.add_mutually_exclusive_group(required=True)
    owner.add_argument("--key", help="key id")
    owner.add_argument("--tenant", help="tenant id (the budget covers all its keys)")
    sub.add_argument("--limit-usd", required=True, help='the limit, exact: "25" or "2.50"')
    sub.add_argument(
        "--period",
        required=True,
        choices=["day", "week", "month", "none"],
        help="calendar period in UTC (week from Monday); none: a lifetime cap",
    )
    sub.add_argument(
        "--threshold",
        type=int,
        action="append",
        help="a percent of the limit whose crossing sends budget.threshold (repeatable)",
    )
    sub.set_defaults(handler=_budgets)
    sub = budget_commands.add_parser(
        "list", help="budgets of a key or a tenant (every one: no pages)", parents=output
    )
    owner = sub.add_mutually_exclusive_group()
    owner.add_argument("--key", help="key id")
    owner.add_argument("--tenant", help="tenant id")
    sub.set_defaults(handler=_budgets, columns=_BUDGET_COLUMNS)
    for action, text, columns in [
        ("show", "a budget and its current period", None),
        ("set-limit", "raise or lower its limit", None),
        ("set-thresholds", "the percents that send budget.threshold (none: no alerts)", None),
        ("top-up", "grant extra spend for the current period", None),
        ("reset", "zero the current period's spend", None),
        ("delete", "stop enforcing it", None),
        ("periods", "spend of every period, newest first", _PERIOD_COLUMNS),
        ("events", "who changed it, and when", _EVENT_COLUMNS),
    ]:
        sub = budget_commands.add_parser(action, help=text, parents=output)
        sub.add_argument("budget_id", help="bud_… id")
        if action in ("set-limit", "top-up"):
            sub.add_argument("usd", help='an exact amount in dollars: "10" or "0.50"')
        if action == "set-thresholds":
            sub.add_argument("percent", type=int, nargs="*", help="percents of the limit, 1-100")
        sub.set_defaults(handler=_budgets, columns=columns)

    report = commands.add_parser(
        "usage",
        help="calls, audio seconds, tokens and cost, grouped",
        parents=output,
    )
    report.add_argument(
        "--group-by", help="comma-separated: tenant, key, model, provider, day, month"
    )
    _time_range_and_format(report)
    report.set_defaults(handler=_usage)

    calls = commands.add_parser(
        "calls",
        help="ledger rows, newest first, with their upstream attempts",
        parents=output,
    )
    calls.add_argument("--key", help="only this key's calls")
    calls.add_argument("--tenant", help="only this tenant's calls")
    calls.add_argument("--review", action="store_true", help="only calls flagged for review")
    _paged(calls)
    calls.set_defaults(handler=_calls, columns=_CALL_COLUMNS)

    hooks = commands.add_parser(
        "webhooks", help="manage webhook endpoints and their deliveries"
    ).add_subparsers(dest="action", required=True)
    create = hooks.add_parser(
        "create", help="register an endpoint and print its signing secret once", parents=output
    )
    create.add_argument("url", help="where events are posted (http or https)")
    create.add_argument(
        "--event",
        action="append",
        required=True,
        choices=_EVENT_TYPES,
        help="an event type to send (repeatable)",
    )
    create.add_argument("--tenant", help="only this tenant's events")
    create.add_argument("--disabled", action="store_true", help="registered, sent nothing yet")
    create.set_defaults(handler=_webhooks)
    listing = hooks.add_parser("list", help="list endpoints, newest first", parents=output)
    _paged(listing)
    listing.set_defaults(handler=_webhooks, columns=_WEBHOOK_COLUMNS)
    for action, text in [
        ("show", "show an endpoint (never its secret)"),
        ("update", "change an endpoint's URL, events, tenant or enabled flag"),
        ("delete", "delete an endpoint: nothing more is sent to it"),
        ("rotate-secret", "give an endpoint a new signing secret, printed once"),
        ("deliveries", "an endpoint's deliveries, newest first"),
        ("redeliver", "send a delivery again now (same event, same webhook-id)"),
    ]:
        sub = hooks.add_parser(action, help=text, parents=output)
        sub.add_argument("webhook_id", help="whk_… id")
        sub.set_defaults(handler=_webhooks)
        if action == "update":
            sub.add_argument("--url", help="a new URL")
            sub.add_argument(
                "--event",
                action="append",
                choices=_EVENT_TYPES,
                help="the event types to send, replacing the old ones (repeatable)",
            )
            sub.add_argument("--tenant", help="only this tenant's events")
            sub.add_argument("--all-tenants", action="store_true", help="every tenant's events")
            sub.add_argument("--enable", action="store_true", help="send events again")
            sub.add_argument("--disable", action="store_true", help="send nothing for now")
        elif action == "deliveries":
            _paged(sub)
            sub.set_defaults(columns=_DELIVERY_COLUMNS)
        elif action == "redeliver":
            sub.add_argument("delivery_id", help="dlv_… id")

    trail = commands.add_parser(
        "audit",
        help="admin changes, newest first: who changed what, before and after",
        parents=output,
    )
    trail.add_argument("--target", help="only changes to this id")
    trail.add_argument("--actor", help="only changes by token, user:NAME or cli:OS_USER")
    trail.add_argument("--action", help="only this action, e.g. key.revoke")
    _time_range_and_format(trail)
    _paged(trail)
    trail.set_defaults(handler=_audit, columns=_AUDIT_COLUMNS)

    admin_commands = commands.add_parser("admin", help="manage admin users").add_subparsers(
        dest="action", required=True
    )
    user = admin_commands.add_parser(
        "create-user",
        help="create an admin user; the password is read from stdin or a prompt",
        parents=output,
    )
    user.add_argument("name", help="the sign-in name")
    user.set_defaults(handler=_admin_create_user)
    admin_commands.add_parser("list-users", help="list admin users", parents=output).set_defaults(
        handler=_admin_users, columns=_USER_COLUMNS
    )
    for action, text in [
        ("set-password", "give an admin user a new password (stdin or a prompt)"),
        ("delete-user", "delete an admin user: refused from the next request"),
    ]:
        sub = admin_commands.add_parser(action, help=text)
        sub.add_argument("name", help="the sign-in name")
        sub.set_defaults(handler=_admin_users)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # The errors that end a command with one line, imported once a command is to run:
    # `--help` and `--version` have already exited.
    from sqlalchemy.exc import DBAPIError

    from app.errors import EarmarkError
    from app.storage.migrate import SchemaNotCurrent

    try:
        settings = load_settings()
        result = args.handler(settings, args)
    except (SettingsError, SchemaNotCurrent) as error:
        sys.exit(f"earmark: {error}")
    except (DBAPIError, OSError) as error:
        sys.exit(f"earmark: {_database_problem(settings, error)}")
    except EarmarkError as error:
        sys.exit(f"earmark: {error.message}")
    except msgspec.ValidationError as error:
        sys.exit(f"earmark: invalid input: {error}")
    if result is None:
        return
    from app.cli_output import render, to_json

    if getattr(args, "json", False):
        text, notes = to_json(result), []
    else:
        text, notes = render(result, getattr(args, "columns", None))
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `earmark … | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    for note in notes:
        print(note, file=sys.stderr)
