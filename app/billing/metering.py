"""Prices, usage and cost: what a call used and what it costs, exactly.

Costs are integers in nano-dollars (1e-9 USD). A call's cost is computed once, from its
usage and its model's price, with exact rational arithmetic and a single half-up
rounding, so it is a pure function that never touches a float.
"""

from __future__ import annotations

import functools
import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

import msgspec

NANOS_PER_USD = 1_000_000_000
_MILLION = 1_000_000
_PRICE_LIMITS = {
    "per_audio_second": 100,
    "per_audio_minute": 6_000,
    "per_audio_hour": 360_000,
    "minimum_seconds": 86_400,
    "input_text_per_million": 100_000,
    "input_audio_per_million": 100_000,
    "output_per_million": 100_000,
    "audio_tokens_per_second": 10_000,
    "max_output_tokens_per_second": 10_000,
    "output_tokens_per_second": 10_000,
}


class Price(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A model's price. Duration and token parts add up; either may be absent."""

    per_audio_second: Decimal | None = None
    per_audio_minute: Decimal | None = None
    per_audio_hour: Decimal | None = None
    # Calls shorter than this are billed as this long (Groq bills at least 10 s).
    minimum_seconds: Decimal = Decimal(0)
    input_text_per_million: Decimal | None = None
    input_audio_per_million: Decimal | None = None
    output_per_million: Decimal | None = None
    # For estimating audio tokens from duration when a provider reports none.
    audio_tokens_per_second: Decimal = Decimal(10)
    # Upper bound on transcript tokens per second of audio, for the budget hold.
    max_output_tokens_per_second: Decimal = Decimal(20)
    # A typical transcript's tokens per second of speech, for an uncertain attempt's cost.
    output_tokens_per_second: Decimal = Decimal(4)

    def per_second(self) -> Fraction | None:
        """The duration price per second, whichever unit the config used."""
        for value, seconds in (
            (self.per_audio_second, 1),
            (self.per_audio_minute, 60),
            (self.per_audio_hour, 3600),
        ):
            if value is not None:
                return Fraction(value) / seconds
        return None

    @property
    def is_token_priced(self) -> bool:
        return any(
            value is not None
            for value in (
                self.input_text_per_million,
                self.input_audio_per_million,
                self.output_per_million,
            )
        )

    def check(self) -> None:
        """Raise ValueError on a price that cannot be what the operator meant."""
        duration_units = [
            unit
            for unit in (self.per_audio_second, self.per_audio_minute, self.per_audio_hour)
            if unit is not None
        ]
        if len(duration_units) > 1:
            raise ValueError("give one of per_audio_second, per_audio_minute, per_audio_hour")
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if isinstance(value, Decimal) and (not value.is_finite() or value < 0):
                raise ValueError(f"{name} must be a finite number >= 0")
            # Bounds no real price nears, so that no call's cost can overflow the ledger.
            limit = _PRICE_LIMITS.get(name)
            if limit is not None and value is not None and value > limit:
                raise ValueError(f"{name} must be at most {limit}")


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """What one call used. ``None`` means not reported, which is not the same as zero."""

    audio_ms: int | None = None
    input_text_tokens: int | None = None
    input_audio_tokens: int | None = None
    output_tokens: int | None = None

    @property
    def total_tokens(self) -> int | None:
        parts = [self.input_text_tokens, self.input_audio_tokens, self.output_tokens]
        if all(part is None for part in parts):
            return None
        return sum(part or 0 for part in parts)


class _Rates(msgspec.Struct, frozen=True):
    """A price as integers over one denominator: nano-dollars per billed millisecond and
    per token of each kind, times ``denominator`` (so a cost is integer arithmetic)."""

    denominator: int
    per_ms: int | None  # None: no duration part
    minimum_ms: int  # the minimum billed duration, in 1/``ms_scale`` milliseconds
    ms_scale: int
    per_text: int | None
    per_audio: int | None
    per_output: int | None


@functools.cache
def _rates(price: Price) -> _Rates:
    per_second = price.per_second()
    minimum = Fraction(price.minimum_seconds) * 1000
    per_ms = per_second * 1_000_000 / minimum.denominator if per_second is not None else None
    per_token = [
        Fraction(value) * 1000 if value is not None else None
        for value in (
            price.input_text_per_million,
            price.input_audio_per_million,
            price.output_per_million,
        )
    ]
    rates = [rate for rate in (per_ms, *per_token) if rate is not None]
    denominator = math.lcm(*(rate.denominator for rate in rates)) if rates else 1

    def scaled(rate: Fraction | None) -> int | None:
        return None if rate is None else int(rate * denominator)

    return _Rates(
        denominator=denominator,
        per_ms=scaled(per_ms),
        minimum_ms=minimum.numerator,
        ms_scale=minimum.denominator,
        per_text=scaled(per_token[0]),
        per_audio=scaled(per_token[1]),
        per_output=scaled(per_token[2]),
    )


def cost_nanos(price: Price, usage: Usage) -> int:
    rates = _rates(price)
    total = 0  # nano-dollars times rates.denominator
    if rates.per_ms is not None and usage.audio_ms is not None:
        total += rates.per_ms * max(usage.audio_ms * rates.ms_scale, rates.minimum_ms)
    for count, rate in (
        (usage.input_text_tokens, rates.per_text),
        (usage.input_audio_tokens, rates.per_audio),
        (usage.output_tokens, rates.per_output),
    ):
        if count and rate is not None:
            total += rate * count
    return (2 * total + rates.denominator) // (2 * rates.denominator)  # half up, once


def usd(nanos: int) -> str:
    """Nano-dollars as an exact decimal string, e.g. ``"0.000585000"``."""
    return f"{Decimal(nanos).scaleb(-9):.9f}"


# What a provider may report for one call: more is not a measurement (it would not fit the
# ledger's columns either), so it counts as not reported and the probe's figure is used.
MAX_COUNT = 2**31 - 1


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT:
        return value
    return None


def usage_from_body(body: Any) -> Usage:
    """The provider's ``usage`` object from a JSON response or a ``transcript.text.done``
    event: token usage (gpt-4o-transcribe), or duration usage (whisper-1)."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return Usage()
    if usage.get("type") == "duration" or "seconds" in usage:
        seconds = usage.get("seconds")
        valid = isinstance(seconds, int | float) and not isinstance(seconds, bool)
        if valid and 0 <= seconds <= MAX_COUNT / 1000:
            return Usage(audio_ms=round(Decimal(str(seconds)) * 1000))
        return Usage()
    details = usage.get("input_token_details")
    details = details if isinstance(details, dict) else {}
    text, audio = _count(details.get("text_tokens")), _count(details.get("audio_tokens"))
    input_tokens = _count(usage.get("input_tokens"))
    if text is None and audio is None and input_tokens is not None:
        audio = input_tokens  # an audio call's undetailed input is audio
    return Usage(
        input_text_tokens=text,
        input_audio_tokens=audio,
        output_tokens=_count(usage.get("output_tokens")),
    )


class Billing(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a provider turns a call's audio into billed seconds, and the margin held."""

    # Billed in whole increments of this many seconds, rounded up (0: to the millisecond).
    round_up_seconds: Decimal = Decimal(1)
    # Held beyond the expected duration, for providers that count container padding.
    hold_padding_seconds: Decimal = Decimal(0)

    def billed_ms(self, audio_ms: int) -> int:
        step = _step_ms(self)
        if step <= 0:
            return audio_ms
        return int(-(-audio_ms // step) * step)  # whole steps, rounded up

    def check(self) -> None:
        for name in ("round_up_seconds", "hold_padding_seconds"):
            value = getattr(self, name)
            if not value.is_finite() or not 0 <= value <= 3600:
                raise ValueError(f"{name} must be from 0 to 3600")


@functools.cache
def _step_ms(billing: Billing) -> int | Fraction:
    step = Fraction(billing.round_up_seconds) * 1000
    return int(step) if step.denominator == 1 else step


NO_USAGE = Usage()


def meter(
    price: Price, billing: Billing, reported: Usage, probed_ms: int
) -> tuple[Usage, str, int]:
    """What an answered call is billed: (usage, its source, cost). The provider's usage
    wins; the measured audio, billed as the provider bills it, fills in the seconds; a
    token-priced call with no token count is billed an estimate, never zero."""
    source = "probe" if reported == NO_USAGE else "provider"
    audio_ms = billing.billed_ms(probed_ms) if reported.audio_ms is None else reported.audio_ms
    usage = msgspec.structs.replace(reported, audio_ms=audio_ms)
    if price.is_token_priced and usage.total_tokens is None:
        usage = msgspec.structs.replace(
            usage, input_audio_tokens=estimated_audio_tokens(price, probed_ms)
        )
        source = "estimate"
    return usage, source, cost_nanos(price, usage)


def expected_nanos(price: Price, billing: Billing, probed_ms: int, prompt: str) -> int:
    """What one attempt is expected to cost: exact for duration prices (the measured audio
    billed as the provider bills it); for token prices, tokens estimated from the audio
    (``audio_tokens_per_second``), the prompt (about four bytes a token) and a typical
    transcript (``output_tokens_per_second``)."""
    billed = billing.billed_ms(probed_ms)
    estimate = Usage(
        audio_ms=billed,
        input_text_tokens=len(prompt.encode()) // 4,
        input_audio_tokens=estimated_audio_tokens(price, billed),
        output_tokens=_tokens(price.output_tokens_per_second, billed),
    )
    return cost_nanos(price, estimate)


def hold_nanos(price: Price, billing: Billing, probed_ms: int, prompt: str) -> int:
    """The most a call can cost, reserved before it goes upstream.

    Its expected cost for duration prices, plus ``hold_padding_seconds``; a calibrated
    upper bound for token prices: audio tokens at ``audio_tokens_per_second``, one text
    token per prompt byte at most, and ``max_output_tokens_per_second`` of transcript. A
    call that costs more is still charged in full, flagged and counted as an overrun.
    """
    padding = int(Fraction(billing.hold_padding_seconds) * 1000)
    billed = billing.billed_ms(probed_ms + padding)
    bound = Usage(
        audio_ms=billed,
        input_text_tokens=len(prompt.encode()),
        input_audio_tokens=estimated_audio_tokens(price, billed),
        output_tokens=_tokens(price.max_output_tokens_per_second, billed),
    )
    return cost_nanos(price, bound)


def estimated_audio_tokens(price: Price, audio_ms: int) -> int:
    """An upper-bound estimate of a call's audio tokens from its duration."""
    return _tokens(price.audio_tokens_per_second, audio_ms)


def _tokens(per_second: Decimal, audio_ms: int) -> int:
    """Tokens at ``per_second`` over ``audio_ms``, rounded up."""
    per_ms = _per_ms(per_second)
    return -(-(per_ms.numerator * audio_ms) // per_ms.denominator)


@functools.cache
def _per_ms(per_second: Decimal) -> Fraction:
    return Fraction(per_second) / 1000
