"""Proof of possession (RFC 9449) on a real gateway (memory store and Redis) in front of
the reference backend: a token asked for with a proof is bound to its key; each use and
renewal needs a fresh proof by it; a missing, bad or replayed proof is 401
``invalid_dpop_proof``; a proof by another key is 403 and revokes the conversation; a
key-bound token survives a change of network."""

import asyncio
import time
from typing import Any

from structlog.testing import capture_logs

from gateway.core.token_codec import ClientToken
from tests.support.dpop import ProofKey
from tests.support.harness import MESSAGES_URL, REFRESH_URL, SEND_URL, TOKEN_URL, Gateway

CHALLENGE = 'DPoP error="invalid_dpop_proof"'


def claims(gateway: Gateway, token: str) -> ClientToken:
    return gateway.services.codec.decode(token, time.time())


async def bound_token(gateway: Gateway, key: ProofKey, **headers: str) -> str:
    agent_key = await gateway.create_key()
    url = gateway.url + TOKEN_URL.format(model="demo")
    return await gateway.get_token(agent_key, DPoP=key.proof("GET", url), **headers)


async def send(gateway: Gateway, token: str, proof: str | None, **headers: str) -> tuple[int, Any]:
    extra = {"DPoP": proof} if proof is not None else {}
    async with gateway.send(token, **extra, **headers) as resp:
        return resp.status, (await resp.json(content_type=None)), resp.headers


async def renewed(gateway: Gateway, key: ProofKey, token: str, **headers: str) -> str:
    """The successor of ``token``, renewed with a proof by ``key``."""
    proof = key.proof("POST", gateway.url + REFRESH_URL, token=token)
    async with gateway.refresh(token, DPoP=proof, **headers) as resp:
        body = await resp.json()
        assert resp.status == 200, body
    return str(body["token"])


async def test_a_token_asked_for_with_a_proof_is_bound_and_used_with_proofs(
    gateway: Gateway,
) -> None:
    key = ProofKey()
    token = await bound_token(gateway, key)
    assert claims(gateway, token).jkt == key.jkt
    assert claims(gateway, token).fingerprint is None
    status, body, _ = await send(
        gateway, token, key.proof("POST", gateway.url + SEND_URL, token=token)
    )
    assert status == 200, body
    url = gateway.url + MESSAGES_URL.format(token=token)
    async with gateway.messages(token, DPoP=key.proof("GET", url, token=token)) as resp:
        assert resp.status == 200, await resp.text()
    successor = await renewed(gateway, key, token)
    assert claims(gateway, successor).jkt == key.jkt
    status, body, _ = await send(
        gateway, successor, key.proof("POST", gateway.url + SEND_URL, token=successor)
    )
    assert status == 200, body


async def test_a_bound_token_without_a_proof_or_with_a_bad_one_is_401(gateway: Gateway) -> None:
    key = ProofKey()
    token = await bound_token(gateway, key)
    before = gateway.sample("gateway_dpop_proofs_refused_total", reason="missing")
    url = gateway.url + SEND_URL
    cases = {
        "missing": None,
        "token_hash": key.proof("POST", url),
        "url": key.proof(
            "POST", "https://elsewhere.example/v1/chat/conversation/public/message", token=token
        ),
        "method": key.proof("GET", url, token=token),
        "time": key.proof("POST", url, token=token, iat=time.time() - 120),
        "type": key.proof("POST", url, token=token, header={"typ": "JWT"}),
    }
    for reason, proof in cases.items():
        status, body, headers = await send(gateway, token, proof)
        assert (status, body["code"]) == (401, "invalid_dpop_proof"), reason
        if reason == "time":  # the gateway's time, for the client's next proof
            assert headers["WWW-Authenticate"].startswith('DPoP error="use_dpop_nonce"')
            assert "DPoP-Nonce" in headers
        else:
            assert headers["WWW-Authenticate"].startswith(CHALLENGE)
            assert "DPoP-Nonce" not in headers
    assert gateway.sample("gateway_dpop_proofs_refused_total", reason="missing") == before + 1
    # none of these harmed the token: its owner goes on
    status, body, _ = await send(gateway, token, key.proof("POST", url, token=token))
    assert status == 200, body


async def test_a_replayed_proof_is_refused(gateway: Gateway) -> None:
    key = ProofKey()
    token = await bound_token(gateway, key)
    proof = key.proof("POST", gateway.url + SEND_URL, token=token)
    assert (await send(gateway, token, proof))[0] == 200
    status, body, _ = await send(gateway, token, proof)
    assert (status, body["code"]) == (401, "invalid_dpop_proof")
    assert gateway.sample("gateway_dpop_proofs_refused_total", reason="replayed") >= 1


async def test_a_token_request_proof_cannot_be_replayed(gateway: Gateway) -> None:
    key, agent_key = ProofKey(), await gateway.create_key()
    url = gateway.url + TOKEN_URL.format(model="demo")
    proof = key.proof("GET", url)
    headers = gateway.headers({"Authorization": f"Bearer {agent_key}", "DPoP": proof})
    async with gateway.http.get(url, headers=headers) as resp:
        assert resp.status == 200
    async with gateway.http.get(url, headers=headers) as resp:
        assert resp.status == 401
        assert (await resp.json())["code"] == "invalid_dpop_proof"


async def test_a_proof_by_another_key_revokes_the_conversation(gateway: Gateway) -> None:
    owner, thief = ProofKey(), ProofKey()
    token = await bound_token(gateway, owner)
    url = gateway.url + SEND_URL
    successor = await renewed(gateway, owner, token)
    status, body, _ = await send(gateway, successor, thief.proof("POST", url, token=successor))
    assert (status, body["code"]) == (403, "token_reuse_suspected")
    # the owner's own key no longer helps: the token and its whole family are revoked
    status, body, _ = await send(gateway, successor, owner.proof("POST", url, token=successor))
    assert status == 403, body
    assert gateway.sample("gateway_token_family_revocations_total", reason="proof") == 1
    assert gateway.sample("gateway_dpop_proofs_refused_total", reason="other_key") == 1


async def test_a_bound_token_survives_a_change_of_network(
    gateway_factory: Any, store_kind: str
) -> None:
    gateway = await gateway_factory(store=store_kind, server={"trusted_proxies": ["127.0.0.0/8"]})
    key = ProofKey()
    token = await bound_token(gateway, key, **{"X-Forwarded-For": "198.51.100.7"})
    url = gateway.url + SEND_URL
    changes = []
    for address, agent in [
        ("198.51.100.7", "A"),
        ("203.0.113.9", "A"),
        ("2001:db8::1", "B"),
        ("198.51.100.8", "A"),  # back on the first network (its /24)
    ]:
        headers = {"X-Forwarded-For": address, "User-Agent": agent}
        with capture_logs() as events:
            status, body, _ = await send(
                gateway, token, key.proof("POST", url, token=token), **headers
            )
        assert status == 200, (address, body)
        changes += [e for e in events if e["event"] == "token_network_changed"]
    # the network is recorded (its first fingerprint), never checked: the two uses from
    # elsewhere are flagged, at info, with the conversation's hash and not its id
    assert len(changes) == 2
    conversation = claims(gateway, token).conversation_id
    assert all(e["log_level"] == "info" and conversation not in str(e) for e in changes)
    assert gateway.sample("gateway_tokens_flagged_total", binding="proof") == 2
    # a token without a key is still bound to the network (fingerprint binding)
    plain = await gateway.get_token(
        await gateway.create_key(), **{"X-Forwarded-For": "198.51.100.7"}
    )
    status, _, _ = await send(gateway, plain, None, **{"X-Forwarded-For": "198.51.100.7"})
    assert status == 200
    status, body, _ = await send(gateway, plain, None, **{"X-Forwarded-For": "203.0.113.9"})
    assert (status, body["code"]) == (403, "token_reuse_suspected")
    assert gateway.sample("gateway_tokens_flagged_total", binding="fingerprint") == 0


async def test_bound_at_issue_a_key_bound_token_records_its_network_through_renewals(
    gateway_factory: Any,
) -> None:
    """Under ``bind_at: issue`` a key-bound token carries the fingerprint of the client
    that asked for it, and its successors keep it: a use or a renewal from another network
    is flagged, never refused, and does not move the record to that network."""
    gateway = await gateway_factory(
        server={"trusted_proxies": ["127.0.0.0/8"]},
        policies="binding: {bind_at: issue, action: revoke}\n",
    )
    key = ProofKey()
    home, away = {"X-Forwarded-For": "198.51.100.7"}, {"X-Forwarded-For": "203.0.113.9"}
    token = await bound_token(gateway, key, **home)
    issued = claims(gateway, token).fingerprint
    assert issued and claims(gateway, token).jkt == key.jkt
    successor = await renewed(gateway, key, token, **away)
    assert claims(gateway, successor).fingerprint == issued
    url = gateway.url + SEND_URL
    for headers in (away, home, away):
        status, body, _ = await send(
            gateway, successor, key.proof("POST", url, token=successor), **headers
        )
        assert status == 200, body
    assert gateway.sample("gateway_tokens_flagged_total", binding="proof") == 3


async def test_htu_through_a_trusted_proxy_and_with_a_public_url(gateway_factory: Any) -> None:
    proxied = await gateway_factory(server={"trusted_proxies": ["127.0.0.0/8"]})
    key = ProofKey()
    token = await bound_token(proxied, key)
    public = "https://chat.example" + SEND_URL
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "chat.example"}
    status, body, _ = await send(
        proxied, token, key.proof("POST", public + "?x=1", token=token), **forwarded
    )
    assert status == 200, body
    direct = await gateway_factory()  # the same headers from an untrusted peer are ignored
    token = await bound_token(direct, key)
    status, body, _ = await send(direct, token, key.proof("POST", public, token=token), **forwarded)
    assert (status, body["code"]) == (401, "invalid_dpop_proof")
    configured = await gateway_factory(server={"public_url": "https://chat.example/"})
    agent_key = await configured.create_key()
    proof = key.proof("GET", "https://chat.example" + TOKEN_URL.format(model="demo"))
    token = await configured.get_token(agent_key, DPoP=proof)
    status, body, _ = await send(configured, token, key.proof("POST", public, token=token))
    assert status == 200, body
    status, body, _ = await send(
        configured, token, key.proof("POST", configured.url + SEND_URL, token=token)
    )
    assert status == 401


async def test_a_token_without_a_key_needs_no_proof(gateway: Gateway) -> None:
    token = await gateway.new_token()
    assert claims(gateway, token).jkt is None
    status, body, _ = await send(gateway, token, None)
    assert status == 200, body


async def test_a_bad_proof_at_token_request_is_refused(gateway: Gateway) -> None:
    key, agent_key = ProofKey(), await gateway.create_key()
    url = gateway.url + TOKEN_URL.format(model="demo")
    for proof in (
        key.proof("POST", url),
        key.proof("GET", url, header={"jwk": dict(key.jwk, d="AA")}),
        "x.y.z",
    ):
        headers = gateway.headers({"Authorization": f"Bearer {agent_key}", "DPoP": proof})
        async with gateway.http.get(url, headers=headers) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith(CHALLENGE)


async def test_binding_mode_fingerprint_ignores_proofs(gateway_factory: Any) -> None:
    gateway = await gateway_factory(policies="binding: {mode: fingerprint}\n")
    token = await bound_token(gateway, ProofKey())
    assert claims(gateway, token).jkt is None
    status, body, _ = await send(gateway, token, None)
    assert status == 200, body


async def test_binding_mode_proof_requires_a_proof_for_a_token(gateway_factory: Any) -> None:
    gateway = await gateway_factory(policies="binding: {mode: proof}\n")
    url = gateway.url + TOKEN_URL.format(model="demo")
    headers = gateway.headers({"Authorization": f"Bearer {await gateway.create_key()}"})
    async with gateway.http.get(url, headers=headers) as resp:
        assert resp.status == 401
        assert (await resp.json())["code"] == "invalid_dpop_proof"
        assert resp.headers["WWW-Authenticate"].startswith(CHALLENGE)
    key = ProofKey()
    token = await bound_token(gateway, key)
    assert claims(gateway, token).jkt == key.jkt


async def test_browser_mode_applies_to_keys_with_origins(gateway_factory: Any) -> None:
    gateway = await gateway_factory(policies="binding: {browser_mode: proof}\n")
    url = gateway.url + TOKEN_URL.format(model="demo")
    page_key = await gateway.create_key(origins=("https://shop.example",))
    headers = {"Authorization": f"Bearer {page_key}", "Origin": "https://shop.example"}
    async with gateway.http.get(url, headers=gateway.headers(headers)) as resp:
        assert resp.status == 401
        assert (await resp.json())["code"] == "invalid_dpop_proof"
    server_key = await gateway.create_key()  # no origins: a server, proofs optional
    token = await gateway.get_token(server_key)
    assert claims(gateway, token).jkt is None


async def test_a_client_that_keeps_sending_bad_proofs_sits_out(gateway_factory: Any) -> None:
    policies = "penalty_box: {threshold: 3, window: 1m, cooldown: 1m}\n"
    gateway = await gateway_factory(policies=policies)
    key = ProofKey()
    token = await bound_token(gateway, key)
    stale = key.proof("POST", gateway.url + SEND_URL, token=token, iat=time.time() - 600)
    agent_key = await gateway.create_key()
    url = gateway.url + TOKEN_URL.format(model="demo")
    headers = gateway.headers({"Authorization": f"Bearer {agent_key}", "DPoP": "x.y.z"})
    async with gateway.http.get(url, headers=headers) as resp:  # one at the token route
        assert resp.status == 401
    codes = [(await send(gateway, token, stale))[1]["code"] for _ in range(3)]
    assert codes == ["invalid_dpop_proof", "invalid_dpop_proof", "rate_limited"]


async def test_a_key_that_requires_proof_gets_bound_tokens_whatever_the_mode(
    gateway_factory: Any,
) -> None:
    """``gateway keys create --require-proof``: that key's tokens need a proof even where
    the policies bind to the network; the policies' other keys are unchanged."""
    gateway = await gateway_factory(policies="binding: {mode: fingerprint}\n")
    url = gateway.url + TOKEN_URL.format(model="demo")
    strict = await gateway.create_key(require_proof=True)
    async with gateway.http.get(
        url, headers=gateway.headers({"Authorization": f"Bearer {strict}"})
    ) as resp:
        assert resp.status == 401
        assert (await resp.json())["code"] == "invalid_dpop_proof"
        assert resp.headers["WWW-Authenticate"].startswith(CHALLENGE)
    key = ProofKey()
    token = await gateway.get_token(strict, DPoP=key.proof("GET", url))
    assert claims(gateway, token).jkt == key.jkt
    status, body, _ = await send(gateway, token, None)  # a copy without the key
    assert status == 401, body
    plain = await gateway.get_token(await gateway.create_key())
    assert claims(gateway, plain).jkt is None


async def test_a_client_with_a_wrong_clock_gets_a_nonce_that_works_on_every_replica(
    gateway_factory: Any,
) -> None:
    """A proof whose ``iat`` is out of the window is refused with RFC 9449's
    ``use_dpop_nonce`` and a ``DPoP-Nonce``; the client's next proof carries it and passes
    whatever its clock says, on another replica too (nonces are derived from the shared
    signing keys); the proof is still single-use, and a made-up nonce is refused."""
    first = await gateway_factory(store="redis")
    second = await gateway_factory(store="redis")  # the same Redis
    key = ProofKey()
    token = await bound_token(first, key)
    slow = time.time() - 600  # ten minutes slow
    url = first.url + SEND_URL
    status, body, headers = await send(first, token, key.proof("POST", url, token=token, iat=slow))
    assert (status, body["code"]) == (401, "invalid_dpop_proof")
    assert headers["WWW-Authenticate"].startswith('DPoP error="use_dpop_nonce"')
    nonce = headers["DPoP-Nonce"]
    proof = key.proof("POST", url, token=token, iat=slow, claims={"nonce": nonce})
    status, body, headers = await send(first, token, proof)
    assert status == 200, body
    assert headers["DPoP-Nonce"].split(".")[0] == nonce.split(".")[0]  # a fresh one
    status, body, _ = await send(first, token, proof)  # replayed: refused
    assert (status, body["code"]) == (401, "invalid_dpop_proof")
    other = second.url + SEND_URL
    proof = key.proof("POST", other, token=token, iat=slow, claims={"nonce": nonce})
    status, body, _ = await send(second, token, proof)
    assert status == 200, body
    forged = nonce.split(".")[0] + ".AAAAAAAAAAAAAAAAAAAAAA"
    proof = key.proof("POST", url, token=token, iat=slow, claims={"nonce": forged})
    status, body, headers = await send(first, token, proof)
    assert (status, body["code"]) == (401, "invalid_dpop_proof")
    assert headers["DPoP-Nonce"] != forged
    assert first.sample("gateway_dpop_proofs_refused_total", reason="nonce") == 1
    assert first.sample("gateway_dpop_proofs_refused_total", reason="time") == 1


async def test_other_key_refuse_turns_away_a_copy_without_ending_the_visitor_s_chat(
    gateway_factory: Any, store_kind: str
) -> None:
    """``binding.other_key: refuse``: a copy of a key-bound token (the current one, or a
    retired one after the rotation overlap) presented with a proof by another key is
    refused, 403, and nothing is revoked: whoever read a token out of a log cannot end
    the conversation with it; the owner's key goes on."""
    gateway = await gateway_factory(
        store=store_kind,
        policies="binding: {other_key: refuse}\n",
        tokens={"rotation_overlap_seconds": 1, "ttl_seconds": 30},
    )
    owner, thief = ProofKey(), ProofKey()
    retired = await bound_token(gateway, owner)
    current = await renewed(gateway, owner, retired)
    await asyncio.sleep(1.2)  # past the overlap: the first token is retired for good
    url = gateway.url + SEND_URL
    for copy in (current, retired):
        status, body, _ = await send(gateway, copy, thief.proof("POST", url, token=copy))
        assert (status, body["code"]) == (403, "token_reuse_suspected")
    status, body, _ = await send(gateway, current, owner.proof("POST", url, token=current))
    assert status == 200, body
    assert gateway.sample("gateway_token_family_revocations_total", reason="proof") == 0
    assert gateway.sample("gateway_token_family_revocations_total", reason="replayed") == 0
    assert gateway.sample("gateway_dpop_proofs_refused_total", reason="other_key") == 2


async def test_a_proof_is_remembered_for_a_replica_whose_clock_is_behind(
    gateway_factory: Any,
) -> None:
    """Two replicas of one public URL on one Redis, the second's clock 5 s behind (the
    tokens' leeway): a proof used on the first is remembered long enough that the second,
    which still finds its ``iat`` in the window, refuses it as replayed (it was remembered
    for 1 s past the first's window, and the second took the replay)."""
    public = "https://chat.example"
    settings = {"tokens": {"proof_window_seconds": 5}, "server": {"public_url": public}}
    first = await gateway_factory(store="redis", **settings)
    second = await gateway_factory(store="redis", **settings)
    second.services.admissions._clock = lambda: time.time() - 5  # behind by the leeway
    key, agent = ProofKey(), await first.create_key()
    token = await first.get_token(
        agent, DPoP=key.proof("GET", public + TOKEN_URL.format(model="demo"))
    )
    proof = key.proof("POST", public + SEND_URL, token=token, iat=time.time() - 3)
    assert (await send(first, token, proof))[0] == 200
    await asyncio.sleep(3.5)  # past the first replica's window and its old 1 s margin
    status, body, _ = await send(second, token, proof)
    assert (status, body["code"]) == (401, "invalid_dpop_proof")
    assert second.sample("gateway_dpop_proofs_refused_total", reason="replayed") == 1
