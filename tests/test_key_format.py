"""The sk-bf- key format: entropy, checksum, digest."""

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from app.access import key_format


def test_generated_keys_are_well_formed_unique_and_url_safe():
    secrets = {key_format.generate() for _ in range(1000)}
    assert len(secrets) == 1000
    for secret in secrets:
        assert secret.startswith("sk-bf-")
        assert len(secret) == key_format.KEY_LENGTH
        assert set(secret[6:]) <= set(string.ascii_letters + string.digits)
        assert key_format.is_well_formed(secret)


def test_body_carries_at_least_256_bits():
    assert 62 ** (key_format.KEY_LENGTH - len("sk-bf-") - 6) >= 2**256


@settings(deadline=None)  # no timing here: a loaded machine is not a failure
@given(
    position=st.integers(min_value=6, max_value=key_format.KEY_LENGTH - 1),
    shift=st.integers(min_value=1, max_value=61),
)
def test_any_single_character_typo_fails_the_checksum(position, shift):
    # The draw never depends on the (random) key, so Hypothesis can replay it.
    alphabet = string.ascii_letters + string.digits
    secret = key_format.generate()
    replacement = alphabet[(alphabet.index(secret[position]) + shift) % len(alphabet)]
    typo = secret[:position] + replacement + secret[position + 1 :]
    assert not key_format.is_well_formed(typo)


def test_wrong_shapes_are_refused():
    secret = key_format.generate()
    for bad in [
        "",
        "sk-bf-",
        secret[:-1],
        secret + "a",
        "sk-xx-" + secret[6:],
        secret[:10] + "-" + secret[11:],
    ]:
        assert not key_format.is_well_formed(bad)


def test_digest_is_keyed_by_the_pepper_and_prefix_is_short():
    secret = key_format.generate()
    assert key_format.digest(secret, "a") != key_format.digest(secret, "b")
    assert key_format.digest(secret, "a") == key_format.digest(secret, "a")
    assert len(key_format.digest(secret, "")) == 32
    assert key_format.display_prefix(secret) == secret[:12]
