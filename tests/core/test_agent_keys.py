import pytest

from gateway.core import agent_keys


def test_generated_key_round_trips() -> None:
    key = agent_keys.generate()
    assert key.key.startswith("pak_")
    assert len(key.key) == agent_keys.MAX_KEY_LEN
    parsed = agent_keys.parse(key.key)
    assert parsed is not None
    assert parsed.key_id == key.key_id
    assert key.key_id in key.key


def test_keys_are_unique_and_carry_at_least_128_bits() -> None:
    keys = {agent_keys.generate().key for _ in range(200)}
    assert len(keys) == 200
    # 43 base62 characters hold log2(62**43) ~ 256 bits; the generator draws 256
    assert agent_keys.SECRET_LEN * 5.95 >= 128


def test_repr_never_shows_the_secret() -> None:
    key = agent_keys.generate()
    assert key.key not in repr(key)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"),  # checksum
        lambda k: k[:20] + ("x" if k[20] != "x" else "y") + k[21:],  # secret
        lambda k: k[:5] + ("x" if k[5] != "x" else "y") + k[6:],  # key id
        lambda k: "pk_" + k[4:],
        lambda k: k + "A",
        lambda k: k[:-1],
        lambda k: k.replace("_", "-"),
        lambda k: "",
        lambda k: k[:30] + "!" + k[31:],
    ],
)
def test_malformed_or_mistyped_keys_are_refused(mutate: object) -> None:
    key = agent_keys.generate().key
    assert callable(mutate)
    assert agent_keys.parse(mutate(key)) is None
