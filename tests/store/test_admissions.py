"""``Admissions`` on each state store, with a fixed clock: token checks on the clock it is
given, the store's verdicts turned into refusals and RateLimit headers, the revocations
this replica has seen, and the penalty box around costly attempts."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import structlog.testing

from gateway.admission import Admissions, Client
from gateway.core.signing_keys import KeySet, SigningKey
from gateway.core.token_codec import ClientToken, TokenCodec
from gateway.errors import ProblemError
from gateway.observability.metrics import Metrics
from gateway.policies.live import LivePolicies
from gateway.store.base import StateStore
from gateway.store.memory import MemoryStore
from tests.support.clock import FixedClock

TTL, LEEWAY = 900, 5
POLICIES = """
penalty_box: {subject: client_ip, threshold: 3, window: 10m, cooldown: 10m}
binding:
  bind_at: first_use
  components: [ip_prefix, user_agent]
  action: revoke
policies:
  - name: send-per-token
    match: {routes: [send]}
    partition: [token]
    limit: {rate: 1, per: 10m, burst: 2}
"""
CODEC = TokenCodec(
    KeySet((SigningKey("k1", b"s" * 40),)),
    issuer="agent-gateway",
    audience="public-agent-api",
    ttl_seconds=TTL,
    leeway_seconds=LEEWAY,
)
VISITOR = Client("203.0.113.5", "visitor/1.0")
ELSEWHERE = Client("198.51.100.9", "other/2.0")


def policies_at(tmp_path: Path, text: str = POLICIES) -> LivePolicies:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "test.yaml").write_text(text)
    policies = LivePolicies(tmp_path / "policies", allow_unprotected=True)
    policies.load()
    return policies


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def admissions(store: StateStore, tmp_path: Path, clock: FixedClock) -> Admissions:
    return Admissions(
        CODEC,
        store,
        policies_at(tmp_path),
        fallback=MemoryStore(),
        key_active=lambda key_id: key_id != "revokedKey01",
        max_token_chars=2048,
        clock=clock,
        metrics=Metrics(),
    )


def issued(admissions: Admissions, key_id: str = "AbCdEf012345") -> str:
    """A token issued now on the admissions' clock (a new partition for the store)."""
    return CODEC.issue(
        key_id=key_id, model_id=f"m-{uuid.uuid4().hex[:8]}", now=admissions.now()
    ).token


def code_of(info: pytest.ExceptionInfo[ProblemError]) -> str:
    return info.value.code


async def use(admissions: Admissions, token: str, client: Client = VISITOR) -> dict[str, str]:
    claims: ClientToken = admissions.decode(token)
    return await admissions.use_token(claims, client, "send", "POST")


async def test_tokens_are_decoded_on_the_clock_given(
    admissions: Admissions, clock: FixedClock
) -> None:
    token = issued(admissions)
    clock.advance(TTL + LEEWAY - 1)
    assert admissions.decode(token).key_id == "AbCdEf012345"  # the last second of leeway
    clock.advance(1)
    with pytest.raises(ProblemError) as info:
        admissions.decode(token)
    assert code_of(info) == "token_expired"
    with pytest.raises(ProblemError) as info:
        admissions.decode("x" * 2049)
    assert code_of(info) == "token_invalid"


async def test_uses_get_ratelimit_headers_until_the_limit(admissions: Admissions) -> None:
    token = issued(admissions)
    for _ in range(2):  # the burst
        headers = await use(admissions, token)
        assert headers["RateLimit-Policy"].startswith('"send-per-token"')
    with pytest.raises(ProblemError) as info:
        await use(admissions, token)
    assert code_of(info) == "rate_limited"
    assert int(info.value.headers["Retry-After"]) > 0


async def test_a_token_of_a_revoked_key_is_refused(admissions: Admissions) -> None:
    with pytest.raises(ProblemError) as info:
        await use(admissions, issued(admissions, key_id="revokedKey01"))
    assert code_of(info) == "token_revoked"


async def test_a_token_used_from_elsewhere_is_revoked_here_until_it_expires(
    admissions: Admissions, clock: FixedClock
) -> None:
    token = issued(admissions)
    await use(admissions, token)
    with pytest.raises(ProblemError) as info:
        await use(admissions, token, ELSEWHERE)
    assert code_of(info) == "token_reuse_suspected"
    jti = admissions.decode(token).jti
    assert admissions.revocations.revoked(jti, clock())
    with pytest.raises(ProblemError) as info:  # refused here, before the store
        await use(admissions, token)
    assert code_of(info) == "token_revoked"
    clock.advance(TTL + 2 * LEEWAY + 1)  # past the token's expiry and the leeway
    assert not admissions.revocations.revoked(jti, clock())


async def test_remembered_revocations_follow_the_clock(
    admissions: Admissions, clock: FixedClock
) -> None:
    token = issued(admissions)
    claims = admissions.decode(token)
    admissions.remember_revoked(claims.jti, claims.expires_at)
    with pytest.raises(ProblemError) as info:
        await use(admissions, token)
    assert code_of(info) == "token_revoked"
    clock.advance(TTL + LEEWAY - 1)
    assert admissions.revocations.revoked(claims.jti, clock())
    clock.advance(1)
    assert not admissions.revocations.revoked(claims.jti, clock())


async def test_failures_fill_the_penalty_box(admissions: Admissions) -> None:
    client = Client(f"192.0.2.{uuid.uuid4().int % 250 + 1}", "flood/1.0")
    admissions.refuse_if_penalized(client)
    for _ in range(3):  # the threshold
        await admissions.failed(client, "invalid_key")
    with pytest.raises(ProblemError) as info:
        admissions.refuse_if_penalized(client)
    assert code_of(info) == "rate_limited"
    with pytest.raises(ProblemError) as info:  # the store says so too
        await admissions.attempt(client)
    assert code_of(info) == "rate_limited"
    admissions.refuse_if_penalized(ELSEWHERE)  # only that client


async def test_attempts_in_flight_count_before_they_run(admissions: Admissions) -> None:
    client = Client(f"192.0.2.{uuid.uuid4().int % 250 + 1}", "flood/1.0")
    attempts = [await admissions.attempt(client) for _ in range(3)]
    with pytest.raises(ProblemError) as info:  # three in flight: the threshold
        await admissions.attempt(client)
    assert "unfinished" in info.value.detail
    await attempts[0].release()  # a success frees its place
    attempts[0] = await admissions.attempt(client)
    for attempt in attempts:
        await attempt.failed("invalid_key")
    with pytest.raises(ProblemError) as info:
        admissions.refuse_if_penalized(client)
    assert code_of(info) == "rate_limited"


@pytest.mark.parametrize(
    ("code", "suspicious", "logged", "boxed"),
    [
        ("token_invalid", "invalid_token", True, True),
        ("token_reuse_suspected", "token_reuse", False, False),
        ("token_revoked", None, True, False),
        ("token_expired", None, False, False),
    ],
)
async def test_each_token_refusal_is_counted_logged_and_boxed_by_its_code(
    admissions: Admissions, code: str, suspicious: str | None, logged: bool, boxed: bool
) -> None:
    registry = admissions.metrics.registry
    client = Client(f"192.0.2.{uuid.uuid4().int % 250 + 1}", "refused/1.0")
    for _ in range(3):  # the penalty box's threshold
        with structlog.testing.capture_logs() as logs:
            await admissions.token_refused(ProblemError(code, "refused"), client, "AbCdEf012345")
        assert [e["code"] for e in logs if e["event"] == "token_refused"] == (
            [code] if logged else []
        )
    assert registry.get_sample_value("gateway_token_uses_refused_total", {"reason": code}) == 3
    events = {
        reason: registry.get_sample_value("gateway_suspicious_events_total", {"reason": reason})
        for reason in ("invalid_token", "token_reuse")
    }
    assert events == {r: (3.0 if r == suspicious else 0.0) for r in events}
    if boxed:
        with pytest.raises(ProblemError) as info:
            admissions.refuse_if_penalized(client)
        assert code_of(info) == "rate_limited"
    else:
        admissions.refuse_if_penalized(client)


async def test_other_problems_are_not_token_refusals(admissions: Admissions) -> None:
    client = Client("192.0.2.77", "refused/1.0")
    for code in ("rate_limited", "store_unavailable", "upstream_timeout"):
        await admissions.token_refused(ProblemError(code, "x"), client, None)
    (family,) = (
        f for f in admissions.metrics.registry.collect() if f.name == "gateway_token_uses_refused"
    )
    assert [sample for sample in family.samples if sample.value] == []
