"""earmark.toml: a complete example parses; every mistake names its entry."""

from decimal import Decimal
from pathlib import Path

import pytest

from app.billing.metering import Price
from app.catalog import Catalog
from app.config import ConfigError, load_config, parse_config, provider_api_keys
from app.errors import InvalidRequest, NotFound, PermissionDenied

EXAMPLE = Path(__file__).parent.parent / "earmark.example.toml"


def test_the_readme_example_parses_and_resolves():
    config = load_config(str(EXAMPLE))
    catalog = Catalog(config)
    assert catalog.resolve("whisper-1").name == "openai/whisper-1"
    assert catalog.resolve("groq/whisper-large-v3").provider.base_url.startswith("https://")
    groq = catalog.resolve("whisper-large-v3")
    assert groq.config.price.minimum_seconds == Decimal(10)
    assert [route.name for route in catalog.fallbacks["openai/whisper-1"]] == [
        "groq/whisper-large-v3"
    ]
    keys = provider_api_keys(config, {"OPENAI_API_KEY": "a", "GROQ_API_KEY": "b"})
    assert keys == {"openai": "a", "groq": "b"}


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ("[providers.x]\n", "providers.x"),
        ("[providers.x]\nbase_url = 5\n", "providers.x.base_url"),
        ('[providers.x]\nbase_url = "ftp://x"\n', "providers.x.base_url"),
        ('[providers.x]\nbase_url = "http://x"\nkind = "bogus"\n', "providers.x.kind"),
        (
            '[providers.x]\nbase_url = "http://x"\ntimeout_seconds = 0\n',
            "providers.x.timeout_seconds",
        ),
        ('[providers.x]\nbase_url = "http://x"\nsurprise = 1\n', "surprise"),
        (
            '[providers.x]\nbase_url = "http://x"\n'
            '[providers.x.models.m]\nprice = {per_audio_second = "-1"}\n',
            "providers.x.models.m.price",
        ),
        (
            '[providers.x]\nbase_url = "http://x"\n'
            '[providers.x.models.m]\nprice = {per_audio_second = "abc"}\n',
            "providers.x.models.m.price.per_audio_second",
        ),
        (
            '[providers.x]\nbase_url = "http://x"\n'
            'cache = {hit_price = {per_audio_second = "-1"}}\n[providers.x.models.m]\n',
            "providers.x.cache.hit_price",
        ),
        (
            '[providers.x]\nbase_url = "http://x"\n'
            '[providers.x.models.m]\ncache = {hit_price = {per_audio_second = "-1"}}\n',
            "providers.x.models.m.cache.hit_price",
        ),
        ("not toml ===", "not valid TOML"),
        ('[providers.l]\nkind = "local"\nbase_url = "http://x"\n', "providers.l.base_url"),
        ('[providers.l]\nkind = "local"\n[providers.l.models.m]\n', "providers.l.models.m.engine"),
        (
            '[providers.l]\nkind = "local"\n[providers.l.models.m]\nengine = "vosk"\n',
            "providers.l.models.m.engine",
        ),
        ('[providers.l]\nkind = "local"\nworkers = 0\n', "providers.l.workers"),
        (
            '[providers.x]\nbase_url = "http://x"\n'
            '[providers.x.models.m]\nengine = "pocketsphinx"\n',
            "providers.x.models.m",
        ),
    ],
)
def test_config_errors_name_the_entry(toml, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        parse_config(toml)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[providers.l]\nkind = "locale"\n',
            "providers.l.kind: 'locale' is not one of openai, azure, local",
        ),
        (
            '[providers.l]\nkind = "local"\n[providers.l.models.m]\nengine = "vosk"\n',
            "providers.l.models.m.engine: 'vosk' is not one of pocketsphinx, faster-whisper",
        ),
    ],
)
def test_a_misspelt_choice_lists_the_valid_ones(toml, message):
    with pytest.raises(ConfigError) as refused:
        parse_config(toml)
    assert str(refused.value) == f"earmark.toml: {message}"


@pytest.mark.parametrize(
    ("toml", "entry"),
    [
        ("[providers.x.models.m]\nprice = {per_audio_minute = 0.006}\n", "models.m.price"),
        ("[providers.x.cache.hit_price]\nper_audio_second = 0.5\n", "cache.hit_price"),
        (
            "[providers.x.models.m.cache.hit_price]\noutput_per_million = 1.5\n",
            "models.m.cache.hit_price",
        ),
    ],
)
def test_a_float_price_is_refused_with_how_to_write_it(toml, entry):
    with pytest.raises(ConfigError) as refused:
        parse_config('[providers.x]\nbase_url = "http://x"\n' + toml)
    assert f"providers.x.{entry}." in str(refused.value)
    assert "quote prices" in str(refused.value)
    # Quoted, or a whole number, it is exact and accepted.
    parse_config(
        '[providers.x]\nbase_url = "http://x"\n'
        + toml.replace("0.006", '"0.006"').replace("0.5", "1").replace("1.5", '"1.5"')
    )


def test_without_a_config_file_the_local_engine_is_served():
    config = load_config(None)
    (provider,) = config.providers.values()
    assert provider.kind == "local"
    assert provider.models["pocketsphinx"].engine == "pocketsphinx"
    assert provider.models["pocketsphinx"].price == Price()  # free unless configured


def test_bad_fallback_and_missing_secret_are_config_errors():
    config = parse_config(
        '[providers.x]\nbase_url = "http://x"\napi_key_env = "X_KEY"\n'
        '[providers.x.models.m]\nfallbacks = ["y/nope"]\n'
    )
    with pytest.raises(ConfigError, match=r"providers\.x\.models\.m\.fallbacks\[0\]"):
        Catalog(config)
    with pytest.raises(ConfigError, match="X_KEY"):
        provider_api_keys(config, {})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("/nonexistent/earmark.toml")


def test_names_resolve_and_allowed_lists_match_any_spelling():
    catalog = Catalog(
        parse_config(
            '[providers.a]\nbase_url = "http://a"\n'
            '[providers.a.models.whisper-1]\naliases = ["stt"]\n'
            '[providers.b]\nbase_url = "http://b"\n'
            "[providers.b.models.whisper-1]\n[providers.b.models.turbo]\n"
        )
    )
    with pytest.raises(InvalidRequest, match="a/whisper-1, b/whisper-1"):
        catalog.resolve("whisper-1")
    with pytest.raises(NotFound):
        catalog.resolve("c/whisper-1")
    stt = catalog.resolve("stt")
    assert stt.name == "a/whisper-1"
    assert catalog.is_allowed(stt, ["stt"])
    assert catalog.is_allowed(stt, ["a/whisper-1"])
    assert not catalog.is_allowed(stt, ["b/whisper-1", "turbo"])
    with pytest.raises(PermissionDenied):
        catalog.check_allowed(stt, "stt", ["turbo"])
    assert [route.name for route in catalog.visible_to(["turbo"])] == ["b/turbo"]
