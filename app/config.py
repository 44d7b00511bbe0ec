"""``earmark.toml``: providers, their models, prices, aliases and fallbacks.

Provider secrets never live in the file: each provider names the environment variable
that holds its API key. Any mistake stops start-up with a message naming the entry.
"""

from __future__ import annotations

import os
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from app.audio.measure import DEFAULT_MAX_SECONDS
from app.billing.metering import Billing, Price

Positive = Annotated[float, msgspec.Meta(gt=0)]
MaxSeconds = Annotated[int, msgspec.Meta(ge=1, le=86_400)]
T = TypeVar("T")


class ConfigError(Exception):
    """The configuration is unusable; the message names the entry."""


class CacheConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Exact-match caching of a model's answers: same audio bytes, same parameters."""

    ttl_seconds: Annotated[int, msgspec.Meta(gt=0)] = 86_400
    max_entries: Annotated[int, msgspec.Meta(gt=0)] = 10_000  # per model; oldest go first
    max_entry_bytes: Annotated[int, msgspec.Meta(gt=0)] = 1_048_576  # larger answers aren't kept
    # What a hit costs the caller (same form as a model's price); free by default.
    hit_price: Price = Price()
    # Entries belong to the tenant whose call made them; true lets every tenant's
    # identical call be answered from them (it also tells a tenant what others sent).
    shared_across_tenants: bool = False


class ModelConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    price: Price = Price()
    aliases: list[str] = []
    # Tried in order when this model's provider fails (5xx, timeout, connection error, 429).
    fallbacks: list[str] = []
    # Azure OpenAI deployment name (defaults to the model name).
    deployment: str | None = None
    # A `local` provider's model: which engine runs it, and the faster-whisper model
    # (a directory, or a name it may download).
    engine: Literal["pocketsphinx", "faster-whisper"] | None = None
    model_path: str | None = None
    # Overrides the provider's cache settings for this model.
    cache: CacheConfig | None = None
    # Longest upload this model accepts, measured from the audio (the provider's own).
    max_audio_seconds: MaxSeconds | None = None
    # How the provider bills this model's audio (the provider's `billing` otherwise).
    billing: Billing | None = None


class ProviderConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: Literal["openai", "azure", "local"] = "openai"
    base_url: str | None = None  # not for `local`
    api_key_env: str | None = None
    api_version: str = "2024-10-21"  # Azure only
    timeout_seconds: Positive = 600.0
    connect_timeout_seconds: Positive = 10.0
    # Whether callers may ask for raw_request / raw_response in extra_fields.
    allow_raw_response: bool = False
    models: dict[str, ModelConfig] = {}
    # Cache every model of this provider (a model's own `cache` table wins).
    cache: CacheConfig | None = None
    # `local` only: worker processes transcribing at once (per gateway process), and the
    # memory each may use (0: no cap).
    workers: Annotated[int, msgspec.Meta(ge=1)] = 1
    memory_limit_mb: Annotated[int, msgspec.Meta(ge=0)] = 2048
    # Longest upload its models accept (a model's own setting wins); 3 hours by default.
    max_audio_seconds: MaxSeconds = DEFAULT_MAX_SECONDS
    # How it bills audio: whole seconds rounded up unless it says otherwise.
    billing: Billing = Billing()


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    providers: dict[str, ProviderConfig] = {}


def _convert(raw: object, kind: type, where: str, source: str):
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as error:
        message, _, path = str(error).partition(" - at `$")
        path = path.rstrip("`")
        enum = re.fullmatch(r"Invalid enum value (.*)", message)
        choices = enum and _choices(kind, re.findall(r"\.(\w+)", path))
        if enum and choices:
            message = f"{enum.group(1)} is not one of {', '.join(choices)}"
        raise ConfigError(f"{source}: {where}{path}: {message}") from None


def _choices(kind: Any, path: list[str]) -> list[str] | None:
    """The values a ``Literal`` field at ``path`` (field names from ``kind``) may take."""
    for name in path:
        hints = typing.get_type_hints(kind) if isinstance(kind, type) else {}
        if name not in hints:
            return None
        kind = hints[name]
        # Through ``X | None``: the struct or literal inside.
        inner = [a for a in typing.get_args(kind) if a is not type(None)]
        if typing.get_origin(kind) is not Literal and len(inner) == 1:
            kind = inner[0]
    if typing.get_origin(kind) is Literal:
        return [str(value) for value in typing.get_args(kind)]
    inner = [a for a in typing.get_args(kind) if typing.get_origin(a) is Literal]
    return [str(value) for value in typing.get_args(inner[0])] if inner else None


_PRICE_TABLES = ("price", "hit_price")


def _refuse_float_prices(raw: object, where: str, source: str) -> None:
    """Money is exact: a TOML float (0.006) is a binary approximation of the price, so a
    price must be written as a string ("0.006") or a whole number."""
    if not isinstance(raw, dict):
        return
    for name, value in raw.items():
        if name in _PRICE_TABLES and isinstance(value, dict):
            for field, amount in value.items():
                if isinstance(amount, float):
                    raise ConfigError(
                        f"{source}: {where}.{name}.{field}: {amount!r} is a float; quote "
                        f'prices ({field} = "{amount!r}") so they are exact'
                    )
        elif isinstance(value, dict):
            _refuse_float_prices(value, f"{where}.{name}", source)


def _table(raw: object, where: str, source: str) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where}: expected a table")
    return dict(raw)


def parse_config(text: str, source: str = "earmark.toml") -> Config:
    """Parse provider by provider and model by model, so an error names its TOML path."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML: {error}") from None
    unknown = set(raw) - {"providers"}
    if unknown:
        raise ConfigError(f"{source}: unknown top-level entry {sorted(unknown)[0]!r}")
    providers = {}
    for name, table in _table(raw.get("providers", {}), "providers", source).items():
        where = f"providers.{name}"
        table = _table(table, where, source)
        _refuse_float_prices(table, where, source)
        models_raw = _table(table.pop("models", {}), f"{where}.models", source)
        provider = _convert(table, ProviderConfig, where, source)
        if "/" in name:
            raise ConfigError(f"{source}: {where}: a provider name cannot contain '/'")
        _check_provider(provider, where, source)
        models = {}
        for model_name, model_raw in models_raw.items():
            model_where = f"{where}.models.{model_name}"
            model = _convert(model_raw, ModelConfig, model_where, source)
            _check_model(provider, model, model_where, source)
            models[model_name] = model
        providers[name] = msgspec.structs.replace(provider, models=models)
    return Config(providers=providers)


def _check_price(price: Price, where: str, source: str) -> None:
    try:
        price.check()
    except ValueError as error:
        raise ConfigError(f"{source}: {where}: {error}") from None


def _check_cache(cache: CacheConfig | None, where: str, source: str) -> None:
    if cache is not None:
        _check_price(cache.hit_price, f"{where}.cache.hit_price", source)


def _check_billing(billing: Billing | None, where: str, source: str) -> None:
    if billing is not None:
        try:
            billing.check()
        except ValueError as error:
            raise ConfigError(f"{source}: {where}.billing: {error}") from None


def _check_provider(provider: ProviderConfig, where: str, source: str) -> None:
    _check_cache(provider.cache, where, source)
    _check_billing(provider.billing, where, source)
    if provider.kind == "local":
        if provider.base_url is not None:
            raise ConfigError(f"{source}: {where}.base_url: a local provider has no URL")
    elif not (provider.base_url or "").startswith(("http://", "https://")):
        raise ConfigError(f"{source}: {where}.base_url: must be an http(s) URL")


def _check_model(provider: ProviderConfig, model: ModelConfig, where: str, source: str) -> None:
    _check_price(model.price, f"{where}.price", source)
    _check_billing(model.billing, where, source)
    _check_cache(model.cache, where, source)
    if provider.kind == "local" and model.engine is None:
        raise ConfigError(f"{source}: {where}.engine: required for a local model")
    if provider.kind != "local" and (model.engine or model.model_path):
        raise ConfigError(f"{source}: {where}: engine and model_path are for local providers")


# Without EARMARK_CONFIG, Earmark transcribes on this machine, offline and free.
DEFAULT_CONFIG = """
[providers.local]
kind = "local"

[providers.local.models.pocketsphinx]
engine = "pocketsphinx"
"""


def load_config(path: str | None) -> Config:
    if path is None:
        return parse_config(DEFAULT_CONFIG, source="the built-in configuration")
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"EARMARK_CONFIG={path}: cannot read: {error.strerror}") from None
    return parse_config(text, source=path)


def provider_api_keys(config: Config, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Each provider's API key, read from the variable its config names."""
    keys = {}
    for name, provider in config.providers.items():
        if provider.api_key_env is None:
            continue
        value = environ.get(provider.api_key_env)
        if not value:
            raise ConfigError(
                f"providers.{name}.api_key_env: environment variable "
                f"{provider.api_key_env} is not set"
            )
        keys[name] = value
    return keys
