"""The revocations a replica remembers: for the token's life, within a fixed memory."""

import pytest

from gateway.core.revocations import RevocationSet


def test_a_revocation_holds_until_the_token_expires() -> None:
    seen = RevocationSet()
    seen.add("jti-1", until=1000.0, now=100.0)
    assert seen.revoked("jti-1", now=100.0)
    assert seen.revoked("jti-1", now=999.9)
    assert not seen.revoked("jti-1", now=1000.0)
    assert len(seen) == 0  # dropped when found expired
    assert not seen.revoked("jti-2", now=100.0)


def test_an_expired_token_is_not_kept() -> None:
    seen = RevocationSet()
    seen.add("jti-1", until=100.0, now=100.0)
    assert len(seen) == 0


def test_the_oldest_entry_makes_room_at_capacity() -> None:
    seen = RevocationSet(capacity=3)
    for i in range(5):
        seen.add(f"jti-{i}", until=1000.0, now=float(i))
    assert len(seen) == 3
    assert [seen.revoked(f"jti-{i}", now=10.0) for i in range(5)] == [
        False,
        False,
        True,
        True,
        True,
    ]


def test_expired_entries_go_first_as_new_ones_come() -> None:
    seen = RevocationSet(capacity=100)
    for i in range(10):
        seen.add(f"old-{i}", until=50.0, now=0.0)
    for i in range(10):
        seen.add(f"new-{i}", until=500.0, now=60.0)
    # each addition sweeps a bounded number of expired entries from the oldest end
    assert len(seen) == 10  # the old ten are gone
    assert all(seen.revoked(f"new-{i}", now=60.0) for i in range(10))
    for i in range(10, 20):
        seen.add(f"new-{i}", until=500.0, now=60.0)
    assert len(seen) == 20


def test_adding_again_keeps_the_later_deadline_and_the_place() -> None:
    seen = RevocationSet(capacity=2)
    seen.add("a", until=100.0, now=0.0)
    seen.add("b", until=100.0, now=0.0)
    seen.add("a", until=300.0, now=1.0)
    seen.add("a", until=200.0, now=1.0)
    assert seen.revoked("a", now=250.0)
    seen.add("c", until=100.0, now=2.0)  # "a" was seen first: it makes room
    assert not seen.revoked("a", now=3.0)
    assert seen.revoked("b", now=3.0) and seen.revoked("c", now=3.0)


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        RevocationSet(capacity=0)
