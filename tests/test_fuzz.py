"""Generated hostile input, in the suite's short form: requests built from the OpenAPI
schema for every admin and tenant operation (Schemathesis), and mutated audio files.
Neither may produce a 5xx or hang. ``python -m bench.fuzz`` runs the long form.
"""

from __future__ import annotations

import io
import os
import random
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.audio.measure import Limits, measure
from app.audio.refusals import AudioRefused
from tests.conftest import ADMIN
from tests.gateway import FIXTURES, Gateway

EXAMPLES = int(os.environ.get("EARMARK_FUZZ_EXAMPLES", "8"))
AUDIO = {path.name: path.read_bytes() for path in sorted(FIXTURES.glob("*")) if path.suffix}


def test_no_generated_request_is_a_server_error(gateway: Gateway) -> None:
    """Every operation of the live schema, admin and tenant, with generated parameters and
    bodies (schemathesis's pytest loader does not run on this pytest: its strategies do)."""
    tenant = {"authorization": f"Bearer {gateway.new_key()['secret']}"}
    raw = httpx.get(f"{gateway.url}/schema/openapi.json").json()
    operations = [
        result.ok() for result in schemathesis.openapi.from_dict(raw).get_all_operations()
    ]
    assert len(operations) > 20
    failures = []

    def fuzz(operation: Any) -> None:
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=not os.environ.get("EARMARK_FUZZ_EXAMPLES"),
            database=None,
        )
        @given(case=operation.as_strategy())
        def call(case: Any) -> None:
            headers = ADMIN if operation.path.startswith("/admin") else tenant
            response = case.call(base_url=gateway.url, headers=headers)
            if response.status_code >= 500:
                failures.append((case.method, case.formatted_path, response.text[:300]))

        call()

    for operation in operations:
        fuzz(operation)
    assert not failures, failures[:5]


def _mutate(data: bytes, seed: int) -> bytes:
    """What a fuzzer does to a file: flip, overwrite, cut, splice and repeat bytes, often in
    the header where lengths live."""
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        where = rng.choice([rng.randrange(min(len(out), 64)), rng.randrange(len(out))])
        action = rng.randrange(5)
        if action == 0:
            out[where] ^= 1 << rng.randrange(8)
        elif action == 1:
            out[where : where + 4] = rng.choice(
                [b"\xff\xff\xff\xff", b"\0\0\0\0", b"\x7f\xff\xff\xff"]
            )
        elif action == 2:
            del out[where:]
        elif action == 3:
            out[where:where] = out[max(0, where - 64) : where] * rng.randint(1, 50)
        else:
            out[where:where] = rng.randbytes(rng.randint(1, 32))
        if not out:
            out = bytearray(data[:16])
    return bytes(out)


@settings(max_examples=max(60, EXAMPLES * 10), deadline=None)
@given(name=st.sampled_from(sorted(AUDIO)), seed=st.integers(0, 2**32))
def test_mutated_audio_is_measured_or_refused(name: str, seed: int) -> None:
    data = _mutate(AUDIO[name], seed)
    try:
        audio = measure(io.BytesIO(data), len(data), Limits(max_seconds=600))
    except AudioRefused:
        return
    assert 0 < audio.duration_ms <= 600_000


def test_mutated_audio_through_the_gateway_is_never_a_5xx(gateway: Gateway) -> None:
    key = gateway.new_key()
    statuses = set()
    for seed in range(EXAMPLES * 3):
        name = sorted(AUDIO)[seed % len(AUDIO)]
        response = gateway.post_audio(key, "openai/whisper-1", _mutate(AUDIO[name], seed))
        statuses.add(response.status_code)
        assert response.status_code < 500, response.text
    assert 200 in statuses and 400 in statuses  # both kinds were exercised
