"""The agent key store: readable, not empty, and keys a browser can actually use."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

import structlog

from gateway.config import Config
from gateway.core.origins import normalise_origin
from gateway.doctor.findings import Finding, error, ok, warning
from gateway.keystore.base import KeyRecord, KeyStoreError
from gateway.keystore.factory import open_keystore
from gateway.redis_connect import RedisUrlError, safe_url

log = structlog.get_logger("gateway.keystore")

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
FIX_UNREADABLE = {
    "file": "correct the line named (`gateway keys ...` rewrites the file whole)",
    "redis": "start the Redis it names, or correct keys.redis_url (default: store.url)",
}


def location(config: Config) -> str:
    """Where the keys live, for messages (never a password)."""
    if config.keys.type == "file":
        return str(config.keys.path)
    return f"{safe_url(config.key_store_redis_url)} (prefix {config.keys.prefix})"


def fix_empty(config: Config) -> str:
    model = next(iter(config.models))
    return f"gateway keys create --model {model} [--origin https://your.site]"


def empty(config: Config, records: Mapping[str, KeyRecord]) -> Finding | None:
    """A warning when no key can get a token: every token request is refused (404)."""
    if not records:
        what = "no agent key"
    elif not any(r.active for r in records.values()):
        what = f"{len(records)} agent key(s), all revoked"
    else:
        return None
    return warning(
        "keystore.empty",
        f"the key store {location(config)} holds {what}: every token request is refused",
        fix_empty(config),
    )


def log_if_empty(config: Config, records: Mapping[str, KeyRecord]) -> None:
    """At start: a gateway that refuses every key says so, with the fix."""
    found = empty(config, records)
    if found is not None:
        log.warning(found.event, detail=found.message, fix=found.fix)


def _origin_problem(origin: str) -> str | None:
    normalised = normalise_origin(origin)
    if normalised is None:
        return f"origin {origin!r} is not scheme://host[:port]: no browser request matches it"
    parts = urlsplit(normalised)
    if parts.scheme == "http" and parts.netloc.rsplit(":", 1)[0] not in LOOPBACK_HOSTS:
        return f"origin {origin!r} is plain http: the page (and the key in it) can be altered"
    return None


def records_check(config: Config, records: Mapping[str, KeyRecord]) -> list[Finding]:
    findings: list[Finding] = []
    for record in records.values():
        if not record.active:
            continue
        unknown = [m for m in record.models if m not in config.models]
        if unknown:
            findings.append(
                warning(
                    "keystore.models",
                    f"key {record.key_id}: model(s) {', '.join(unknown)} not in models: "
                    "token requests for them are refused (404)",
                    "add the model to the configuration, or revoke the key and create one "
                    "for configured models",
                )
            )
        for origin in record.origins:
            problem = _origin_problem(origin)
            if problem is not None:
                findings.append(
                    warning(
                        "keystore.origins",
                        f"key {record.key_id}: {problem}",
                        "revoke the key and create one with --origin https://your.site",
                    )
                )
    return findings


async def check(config: Config) -> list[Finding]:
    try:
        store = open_keystore(config)
    except RedisUrlError as exc:
        return [error("keystore", str(exc), "correct keys.redis_url or store.url")]
    try:
        await store.refresh()
        records = store.snapshot()
    except (KeyStoreError, RedisUrlError) as exc:
        message = str(exc)  # a file's errors name the file, the line and the field
        if config.keys.type != "file":
            message = f"the key store {location(config)}: cannot be read: {exc}"
        return [error("keystore", message, FIX_UNREADABLE[config.keys.type])]
    finally:
        await store.close()
    found = empty(config, records)
    if found is not None:
        return [found]
    active = sum(1 for r in records.values() if r.active)
    findings = [ok("keystore", f"{location(config)}: {active} active key(s) of {len(records)}")]
    return findings + records_check(config, records)
