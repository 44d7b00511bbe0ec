"""The models callers may address, and how a name resolves to a provider's model.

A model is ``provider/model``, a bare model name that only one provider serves, or an
alias. Fallbacks are resolved once, at start-up, so a bad reference fails there.
"""

from __future__ import annotations

from collections import defaultdict

import msgspec

from app.audio.measure import Limits
from app.billing.metering import Billing
from app.config import CacheConfig, Config, ConfigError, ModelConfig, ProviderConfig
from app.errors import InvalidRequest, NotFound, PermissionDenied


class ModelRoute(msgspec.Struct, frozen=True, kw_only=True):
    """One provider's model, as a call goes to it: a model route (not an HTTP route)."""

    name: str  # canonical "provider/model"
    provider_name: str
    provider: ProviderConfig
    model: str  # the provider's own model name
    config: ModelConfig

    @property
    def upstream_model(self) -> str:
        return self.config.deployment or self.model

    @property
    def cache(self) -> CacheConfig | None:
        return self.config.cache or self.provider.cache

    @property
    def billing(self) -> Billing:
        return self.config.billing or self.provider.billing

    @property
    def audio_limits(self) -> Limits:
        return Limits(max_seconds=self.config.max_audio_seconds or self.provider.max_audio_seconds)


class Catalog:
    def __init__(self, config: Config) -> None:
        self.routes: dict[str, ModelRoute] = {}
        names: defaultdict[str, set[str]] = defaultdict(set)
        for provider_name, provider in config.providers.items():
            for model, model_config in provider.models.items():
                canonical = f"{provider_name}/{model}"
                self.routes[canonical] = ModelRoute(
                    name=canonical,
                    provider_name=provider_name,
                    provider=provider,
                    model=model,
                    config=model_config,
                )
                for name in (model, *model_config.aliases):
                    names[name].add(canonical)
        for alias_owner in self.routes.values():
            for alias in alias_owner.config.aliases:
                if alias in self.routes:
                    raise ConfigError(
                        f"providers.{alias_owner.provider_name}.models.{alias_owner.model}"
                        f".aliases: {alias!r} is already a provider/model name"
                    )
        self._bare = {name: sorted(owners) for name, owners in names.items()}
        self.fallbacks: dict[str, list[ModelRoute]] = {}
        for route in self.routes.values():
            chain = []
            for index, target in enumerate(route.config.fallbacks):
                try:
                    chain.append(self.resolve(target))
                except (NotFound, InvalidRequest) as error:
                    raise ConfigError(
                        f"providers.{route.provider_name}.models.{route.model}"
                        f".fallbacks[{index}]: {error.message}"
                    ) from None
            self.fallbacks[route.name] = chain

    def resolve(self, name: str) -> ModelRoute:
        if route := self.routes.get(name):
            return route
        owners = self._bare.get(name, [])
        if len(owners) == 1:
            return self.routes[owners[0]]
        if owners:
            raise InvalidRequest(
                f"model {name!r} is served by several providers; name one of: " + ", ".join(owners),
                param="model",
                code="model_ambiguous",
            )
        raise NotFound(
            f"The model {name!r} does not exist or is not configured on this gateway.",
            param="model",
            code="model_not_found",
        )

    def check_known(self, allowed: list[str] | None) -> None:
        """A key's allowed-model list names only models this gateway serves (a typo would
        make the key useless without a word): a 400 naming the first unknown entry."""
        for index, name in enumerate(allowed or []):
            if name not in self.routes and name not in self._bare:
                raise InvalidRequest(
                    f"allowed_models[{index}]: {name!r} is not a model on this gateway; "
                    f"known: {', '.join(sorted(self.routes))} (to allow it anyway, e.g. a "
                    "model configured later, say so: allow_unknown_models=true in the API, "
                    "--allow-unknown-models in the CLI)",
                    param="allowed_models",
                    code="model_not_found",
                )

    def is_allowed(self, route: ModelRoute, allowed: list[str] | None) -> bool:
        """Whether a key's allowed-model list (names, bare names or aliases) covers a route."""
        if allowed is None:
            return True
        for entry in allowed:
            if entry == route.name:
                return True
            if route.name in self._bare.get(entry, []):
                return True
        return False

    def check_allowed(self, route: ModelRoute, requested: str, allowed: list[str] | None) -> None:
        if not self.is_allowed(route, allowed):
            raise PermissionDenied(
                f"This API key may not use model {requested!r}.",
                param="model",
                code="model_not_allowed",
            )

    def visible_to(self, allowed: list[str] | None) -> list[ModelRoute]:
        return [route for route in self.routes.values() if self.is_allowed(route, allowed)]
