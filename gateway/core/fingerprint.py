"""Client fingerprints for token binding.

A fingerprint is a short hash of the configured components: the client IP or its network
prefix (IPv4 /24 and IPv6 /64 by default, so a phone that changes address inside its
carrier's network keeps its token) and the User-Agent. Only the hash is stored.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

FINGERPRINT_CHARS = 16
#: the first characters name the rule a fingerprint was made under (see :func:`rule_tag`)
TAG_CHARS = 4


@dataclass(frozen=True, slots=True)
class FingerprintRule:
    components: tuple[str, ...] = ("ip_prefix", "user_agent")
    ipv4_prefix: int = 24
    ipv6_prefix: int = 64

    @property
    def enabled(self) -> bool:
        return bool(self.components)

    @property
    def tag(self) -> str:
        return rule_tag(self)


@functools.lru_cache(maxsize=64)
def rule_tag(rule: FingerprintRule) -> str:
    """A short name for the rule, leading every fingerprint made under it: after the
    binding rule changes (a policy reload), a stored fingerprint with another tag is known
    to be stale and the token is bound again, instead of every live token looking stolen."""
    text = f"{','.join(rule.components)}|{rule.ipv4_prefix}|{rule.ipv6_prefix}"
    return hashlib.sha256(text.encode()).hexdigest()[:TAG_CHARS]


#: parsing an address and building its network costs microseconds, several times per
#: request for an IPv6 client (penalty subject, partitions, fingerprint): remembered
CACHED_PREFIXES = 4096


@functools.lru_cache(maxsize=CACHED_PREFIXES)
def ip_prefix(address: str, ipv4_prefix: int, ipv6_prefix: int) -> str:
    """``203.0.113.7`` -> ``203.0.113.0/24``; an unparseable address is returned as is."""
    try:
        ip = ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    bits = ipv4_prefix if isinstance(ip, IPv4Address) else ipv6_prefix
    return str(ip_network(f"{ip}/{bits}", strict=False))


def fingerprint(rule: FingerprintRule, client_ip: str, user_agent: str) -> str:
    parts: list[str] = []
    for component in rule.components:
        if component == "ip_prefix":
            parts.append(ip_prefix(client_ip, rule.ipv4_prefix, rule.ipv6_prefix))
        elif component == "client_ip":
            parts.append(client_ip)
        elif component == "user_agent":
            parts.append(user_agent)
        else:  # pragma: no cover - validated by the configuration
            raise ValueError(f"unknown fingerprint component {component!r}")
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8", "replace")).hexdigest()
    return rule_tag(rule) + digest[: FINGERPRINT_CHARS - TAG_CHARS]


class FingerprintCache:
    """Remembers fingerprints of recent clients: the same client sends many requests, and
    parsing its address and hashing costs more than a lookup. Bounded (emptied when full);
    long User-Agents are computed each time rather than kept. Entries are for one rule at
    a time (the policy set's): another rule empties the cache."""

    MAX_USER_AGENT = 512

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._rule: FingerprintRule | None = None
        self._known: dict[tuple[str, str], str] = {}

    def __call__(self, rule: FingerprintRule, client_ip: str, user_agent: str) -> str:
        if rule is not self._rule:  # a rule is hashed in Python: compared once, not per lookup
            if rule != self._rule:
                self._known.clear()
            self._rule = rule
        key = (client_ip, user_agent)
        found = self._known.get(key)
        if found is None:
            found = fingerprint(rule, client_ip, user_agent)
            if len(user_agent) <= self.MAX_USER_AGENT:
                if len(self._known) >= self._size:
                    self._known.clear()
                self._known[key] = found
        return found
