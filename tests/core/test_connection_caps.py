import pytest

from gateway.core.connection_caps import (
    TALLIED_CLIENTS,
    ConnectionCounts,
    RefusalTally,
    client_group,
)


@pytest.mark.parametrize(
    ("peer", "group"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    ],
)
def test_clients_are_ipv4_addresses_or_ipv6_networks(peer: str, group: str) -> None:
    assert client_group(peer) == group


def test_a_client_cap_refuses_the_connection_over_it_and_frees_on_close() -> None:
    counts = ConnectionCounts(per_client=2, total=10)
    assert [counts.open("a"), counts.open("a"), counts.open("a")] == [None, None, "client_limit"]
    assert counts.open("b") is None
    assert (counts.total, counts.held_by("a"), counts.held_by("b")) == (3, 2, 1)
    counts.close("a")
    assert counts.open("a") is None
    for client in ("a", "a", "b"):
        counts.close(client)
    assert (counts.total, counts.held_by("a"), counts.held_by("b")) == (0, 0, 0)
    assert counts._by_client == {}  # nothing kept for clients without connections


def test_uncapped_peers_count_towards_the_total_only() -> None:
    counts = ConnectionCounts(per_client=1, total=3)
    assert [counts.open(None) for _ in range(4)] == [None, None, None, "total_limit"]
    counts.close(None)
    assert counts.open("a") is None and counts.open("a") == "total_limit"


def test_zero_disables_a_cap() -> None:
    counts = ConnectionCounts(per_client=0, total=0)
    assert all(counts.open("a") is None for _ in range(1000))
    assert counts.total == 1000 and counts.held_by("a") == 0
    with pytest.raises(ValueError, match="cannot be negative"):
        ConnectionCounts(per_client=-1, total=0)


def test_refusals_are_reported_at_most_once_per_interval() -> None:
    tally = RefusalTally(interval=10, top=2)
    first = tally.record("client_limit", "a", now=100)
    assert first is not None and first.total == 1 and first.top_clients == [("a", 1)]
    for now in range(101, 109):
        assert tally.record("client_limit", "b" if now % 2 else "c", now=now) is None
    assert tally.record("total_limit", "d", now=109.5) is None
    later = tally.record("client_limit", "b", now=110)
    assert later is not None
    assert later.by_reason == {"client_limit": 9, "total_limit": 1}
    assert later.top_clients == [("b", 5), ("c", 4)] and later.other_clients == 1
    assert later.seconds == 9
    assert tally.flush(now=111) is None  # nothing left


def test_flush_reports_the_tail_of_a_burst() -> None:
    tally = RefusalTally(interval=10)
    assert tally.record("client_limit", "a", now=0) is not None
    assert tally.record("client_limit", "a", now=1) is None
    tail = tally.flush(now=2)
    assert tail is not None and tail.total == 1 and tail.top_clients == [("a", 1)]


def test_a_tally_remembers_a_bounded_number_of_clients() -> None:
    tally = RefusalTally(interval=10, top=3)
    tally.record("client_limit", "first", now=0)
    for i in range(TALLIED_CLIENTS * 4):
        tally.record("client_limit", f"10.0.{i // 256}.{i % 256}", now=1)
    assert len(tally._clients) == TALLIED_CLIENTS
    summary = tally.flush(now=2)
    assert summary is not None and summary.total == TALLIED_CLIENTS * 4
    assert summary.other_clients == TALLIED_CLIENTS * 4 - 3
