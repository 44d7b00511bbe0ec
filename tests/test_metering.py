"""Cost is a pure, exact function of usage and price."""

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.billing.metering import (
    Price,
    Usage,
    cost_nanos,
    estimated_audio_tokens,
    usage_from_body,
    usd,
)

WHISPER = Price(per_audio_minute=Decimal("0.006"))
GROQ = Price(per_audio_hour=Decimal("0.111"), minimum_seconds=Decimal(10))
GPT4O = Price(
    input_text_per_million=Decimal("2.50"),
    input_audio_per_million=Decimal("6.00"),
    output_per_million=Decimal("10.00"),
)

prices = st.builds(
    Price,
    per_audio_second=st.none() | st.decimals("0", "1", places=9),
    minimum_seconds=st.decimals("0", "60", places=3),
    input_text_per_million=st.none() | st.decimals("0", "100", places=6),
    input_audio_per_million=st.none() | st.decimals("0", "100", places=6),
    output_per_million=st.none() | st.decimals("0", "100", places=6),
)
counts = st.none() | st.integers(0, 10_000_000)
usages = st.builds(
    Usage,
    audio_ms=st.none() | st.integers(0, 10 * 3600 * 1000),
    input_text_tokens=counts,
    input_audio_tokens=counts,
    output_tokens=counts,
)


def test_published_prices():
    # whisper-1: $0.006 a minute; one minute costs exactly 0.6 cents.
    assert cost_nanos(WHISPER, Usage(audio_ms=60_000)) == 6_000_000
    # Groq whisper-large-v3: $0.111 an hour, at least 10 s: 3 s bills as 10 s.
    assert cost_nanos(GROQ, Usage(audio_ms=3_000)) == cost_nanos(GROQ, Usage(audio_ms=10_000))
    assert cost_nanos(GROQ, Usage(audio_ms=3_600_000)) == 111_000_000
    # gpt-4o-transcribe: 1M of each token kind.
    million = Usage(input_text_tokens=10**6, input_audio_tokens=10**6, output_tokens=10**6)
    assert cost_nanos(GPT4O, million) == 18_500_000_000
    assert usd(18_500_000_000) == "18.500000000"
    assert usd(0) == "0.000000000"
    assert usd(1) == "0.000000001"


@given(prices, usages)
def test_cost_is_a_non_negative_integer_and_deterministic(price, usage):
    cost = cost_nanos(price, usage)
    assert isinstance(cost, int)
    assert cost >= 0
    assert cost == cost_nanos(price, usage)


@given(prices, usages, st.integers(0, 100_000))
def test_more_audio_never_costs_less(price, usage, extra_ms):
    longer = Usage(
        audio_ms=(usage.audio_ms or 0) + extra_ms,
        input_text_tokens=usage.input_text_tokens,
        input_audio_tokens=usage.input_audio_tokens,
        output_tokens=usage.output_tokens,
    )
    assert cost_nanos(price, longer) >= cost_nanos(price, usage)


@given(st.decimals("0.000001", "1", places=9), st.integers(1, 120), st.integers(0, 120_000))
def test_minimum_billed_duration(per_second, minimum, audio_ms):
    price = Price(per_audio_second=per_second, minimum_seconds=Decimal(minimum))
    billed = max(audio_ms, minimum * 1000)
    assert cost_nanos(price, Usage(audio_ms=audio_ms)) == cost_nanos(
        Price(per_audio_second=per_second), Usage(audio_ms=billed)
    )


@given(prices, usages)
def test_duration_and_tokens_add_up_within_one_rounding(price, usage):
    duration_only = Usage(audio_ms=usage.audio_ms)
    tokens_only = Usage(
        input_text_tokens=usage.input_text_tokens,
        input_audio_tokens=usage.input_audio_tokens,
        output_tokens=usage.output_tokens,
    )
    parts = cost_nanos(price, duration_only) + cost_nanos(price, tokens_only)
    assert abs(cost_nanos(price, usage) - parts) <= 1


@given(st.integers(0, 10**15))
def test_usd_round_trips(nanos):
    text = usd(nanos)
    assert int(Decimal(text) * 10**9) == nanos
    assert len(text.partition(".")[2]) == 9


def test_units_must_not_be_mixed_or_negative():
    with pytest.raises(ValueError, match="one of"):
        Price(per_audio_second=Decimal(1), per_audio_minute=Decimal(1)).check()
    with pytest.raises(ValueError, match="output_per_million"):
        Price(output_per_million=Decimal(-1)).check()


@pytest.mark.parametrize(
    ("body", "usage"),
    [
        ({"text": "hi", "usage": {"type": "duration", "seconds": 6}}, Usage(audio_ms=6000)),
        ({"usage": {"type": "duration", "seconds": 5.849}}, Usage(audio_ms=5849)),
        (
            {
                "usage": {
                    "type": "tokens",
                    "input_tokens": 70,
                    "input_token_details": {"text_tokens": 10, "audio_tokens": 60},
                    "output_tokens": 12,
                    "total_tokens": 82,
                }
            },
            Usage(input_text_tokens=10, input_audio_tokens=60, output_tokens=12),
        ),
        (
            {"usage": {"input_tokens": 70, "output_tokens": 3}},
            Usage(input_audio_tokens=70, output_tokens=3),
        ),
        ({"text": "no usage"}, Usage()),
        ({"usage": {"type": "duration", "seconds": "6"}}, Usage()),
        ({"usage": {"input_tokens": -1, "output_tokens": True}}, Usage()),
        ("not an object", Usage()),
    ],
)
def test_usage_from_provider_bodies(body, usage):
    assert usage_from_body(body) == usage


def test_estimated_audio_tokens_round_up():
    assert estimated_audio_tokens(Price(), 5_849) == 59
    assert estimated_audio_tokens(Price(), 0) == 0
