from ipaddress import ip_network

import pytest

from gateway.core.client_ip import ForwardedForError, resolve_client_ip
from gateway.core.fingerprint import FingerprintRule, fingerprint, ip_prefix

PROXIES = [ip_network("10.0.0.0/8"), ip_network("fd00::/8")]


def test_untrusted_peer_ignores_forwarded_for() -> None:
    assert resolve_client_ip("198.51.100.9", ["1.2.3.4"], PROXIES) == "198.51.100.9"
    assert resolve_client_ip("198.51.100.9", ["1.2.3.4"], []) == "198.51.100.9"


def test_trusted_proxy_chain_yields_first_untrusted_hop() -> None:
    # the client forged "6.6.6.6"; the proxy appended the real address
    assert resolve_client_ip("10.0.0.2", ["6.6.6.6, 203.0.113.7"], PROXIES) == "203.0.113.7"
    chain = ["6.6.6.6, 203.0.113.7", "10.1.1.1"]
    assert resolve_client_ip("10.0.0.2", chain, PROXIES) == "203.0.113.7"
    assert resolve_client_ip("10.0.0.2", ["[2001:db8::5]:443"], PROXIES) == "2001:db8::5"
    assert resolve_client_ip("10.0.0.2", ["203.0.113.7:5555"], PROXIES) == "203.0.113.7"


def test_all_trusted_chain_yields_the_leftmost() -> None:
    assert resolve_client_ip("10.0.0.2", ["10.9.9.9"], PROXIES) == "10.9.9.9"
    assert resolve_client_ip("10.0.0.2", [], PROXIES) == "10.0.0.2"


def test_garbage_from_a_trusted_proxy_is_an_error() -> None:
    with pytest.raises(ForwardedForError):
        resolve_client_ip("10.0.0.2", ["not-an-ip"], PROXIES)


def test_ipv4_mapped_addresses_are_normalised() -> None:
    assert resolve_client_ip("::ffff:198.51.100.9", [], PROXIES) == "198.51.100.9"


def test_ip_prefixes() -> None:
    assert ip_prefix("203.0.113.77", 24, 64) == "203.0.113.0/24"
    assert ip_prefix("2001:db8:1:2:3:4:5:6", 24, 64) == "2001:db8:1:2::/64"
    assert ip_prefix("::ffff:203.0.113.77", 24, 64) == "203.0.113.0/24"


def test_fingerprint_components() -> None:
    rule = FingerprintRule()
    same_net = fingerprint(rule, "203.0.113.7", "UA"), fingerprint(rule, "203.0.113.200", "UA")
    assert same_net[0] == same_net[1] and len(same_net[0]) == 16
    assert fingerprint(rule, "203.0.114.7", "UA") != same_net[0]
    assert fingerprint(rule, "203.0.113.7", "Other") != same_net[0]
    exact = FingerprintRule(components=("client_ip",))
    assert fingerprint(exact, "203.0.113.7", "a") != fingerprint(exact, "203.0.113.8", "a")
    assert fingerprint(exact, "203.0.113.7", "a") == fingerprint(exact, "203.0.113.7", "b")


def test_fingerprint_cache_gives_the_same_answers() -> None:
    from gateway.core.fingerprint import FingerprintCache, FingerprintRule, fingerprint

    cache = FingerprintCache(size=2)
    # an equal rule in another object (a policy reload that kept the rule) shares entries
    rules = [FingerprintRule(), FingerprintRule(components=("client_ip",)), FingerprintRule()]
    agents = ["curl/8", "x" * 600]
    for _ in range(2):
        for rule in rules:
            for ip in ("203.0.113.7", "203.0.113.9", "2001:db8::1"):
                for agent in agents:
                    assert cache(rule, ip, agent) == fingerprint(rule, ip, agent)
    assert len(cache._known) <= 2


def test_trusted_peers_include_ipv4_mapped_addresses() -> None:
    from gateway.core.client_ip import is_trusted_peer

    assert is_trusted_peer("::ffff:10.1.2.3", PROXIES)
    assert is_trusted_peer("10.1.2.3", PROXIES)
    assert not is_trusted_peer("::ffff:198.51.100.1", PROXIES)
    assert not is_trusted_peer("garbage", PROXIES)
    assert not is_trusted_peer("10.1.2.3", [])
