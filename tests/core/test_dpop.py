"""The proof checks of gateway.core.dpop, one by one: each field wrong, algorithm tricks,
clock skew, another URL, another key."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest
from jwt.utils import base64url_encode

from gateway.core.dpop import (
    MAX_PROOF_CHARS,
    ProofKeyMismatch,
    ProofNonces,
    ProofRejected,
    ProofVerifier,
    normalize_url,
    thumbprint,
    token_hash,
)
from tests.support.dpop import ProofKey

URL = "https://chat.example/v1/chat/conversation/public/message"
NOW = 1_800_000_000
TOKEN = "header.payload.signature"


#: a verifier that has seen the module key's header: every check below runs through a
#: fresh verifier and through this one, and both must decide alike (the header cache
#: skips nothing that decides)
WARM = ProofVerifier()


@pytest.fixture(scope="module")
def key() -> ProofKey:
    key = ProofKey()
    WARM.verify(key.proof("POST", URL, iat=NOW), method="POST", url=URL, now=NOW)
    return key


def _outcome(verifier: ProofVerifier, proof: str | None, args: dict[str, object]) -> object:
    try:
        return verifier.verify(proof, **args)  # type: ignore[arg-type]
    except ProofRejected as exc:
        return ("rejected", exc.reason)
    except ProofKeyMismatch:
        return ("mismatch",)


def check(proof: str | None, **kwargs: object) -> object:
    args: dict[str, object] = {"method": "POST", "url": URL, "now": NOW, **kwargs}
    cold, warm = _outcome(ProofVerifier(), proof, args), _outcome(WARM, proof, args)
    assert cold == warm
    return ProofVerifier().verify(proof, **args)  # type: ignore[arg-type]


def refused(reason: str, proof: str | None, **kwargs: object) -> None:
    with pytest.raises(ProofRejected) as caught:
        check(proof, **kwargs)
    assert caught.value.reason == reason


def _unsigned(header: dict[str, object], claims: dict[str, object], signature: bytes) -> str:
    parts = [
        base64url_encode(json.dumps(header).encode()),
        base64url_encode(json.dumps(claims).encode()),
    ]
    return b".".join([*parts, base64url_encode(signature) if signature else b""]).decode()


def test_a_good_proof_passes_and_names_its_key(key: ProofKey) -> None:
    proof = check(key.proof("POST", URL, iat=NOW, jti="j1", token=TOKEN), token=TOKEN, jkt=key.jkt)
    assert proof.jkt == key.jkt and proof.jti == "j1" and proof.iat == NOW  # type: ignore[attr-defined]


def test_rfc_7638_thumbprint_of_the_rfc_example() -> None:
    jwk = {  # RFC 7638 section 3.1 (an RSA key) is not a DPoP key type: its EC analogue
        "kty": "EC",
        "crv": "P-256",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
        "kid": "ignored",
    }
    canonical = b'{"crv":"P-256","kty":"EC","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}'
    assert thumbprint(jwk) == base64url_encode(hashlib.sha256(canonical).digest()).decode()


def test_eddsa_passes_and_can_be_turned_off() -> None:
    ed = ProofKey("EdDSA")
    proof = ed.proof("POST", URL, iat=NOW)
    assert check(proof).jkt == ed.jkt  # type: ignore[attr-defined]
    with pytest.raises(ProofRejected) as caught:
        ProofVerifier(algorithms=("ES256",)).verify(proof, method="POST", url=URL, now=NOW)
    assert caught.value.reason == "algorithm"


def test_missing_or_not_a_jwt() -> None:
    refused("missing", None)
    refused("missing", "")
    refused("malformed", "a.b")
    refused("malformed", "!!.!!.!!")
    refused("malformed", "x" * (MAX_PROOF_CHARS + 1))
    refused("malformed", _unsigned_list())


def _unsigned_list() -> str:
    return base64url_encode(b"[1]").decode() + ".e30.AA"


def test_typ_must_be_dpop_jwt(key: ProofKey) -> None:
    refused("type", key.proof("POST", URL, iat=NOW, header={"typ": "JWT"}))
    refused("type", key.proof("POST", URL, iat=NOW, header={"typ": None}))


def test_a_critical_extension_is_refused(key: ProofKey) -> None:
    """RFC 7515 section 4.1.11: a header naming extensions the recipient must understand
    is refused when it does not (none are, here)."""
    refused("malformed", key.proof("POST", URL, iat=NOW, header={"crit": ["exp"], "exp": 1}))
    refused("malformed", key.proof("POST", URL, iat=NOW, header={"crit": []}))


def test_alg_none_is_refused(key: ProofKey) -> None:
    header = {"typ": "dpop+jwt", "alg": "none", "jwk": key.jwk}
    claims = {"jti": "n", "htm": "POST", "htu": URL, "iat": NOW}
    refused("algorithm", _unsigned(header, claims, b""))


def test_symmetric_alg_with_the_public_key_as_secret_is_refused(key: ProofKey) -> None:
    claims = {"jti": "h", "htm": "POST", "htu": URL, "iat": NOW}
    header = {"typ": "dpop+jwt", "alg": "HS256", "jwk": key.jwk}
    unsigned = _unsigned(header, claims, b"")
    secret = json.dumps(key.jwk).encode()
    mac = hmac.new(secret, unsigned.rstrip(".").encode(), hashlib.sha256).digest()
    refused("algorithm", unsigned + base64url_encode(mac).decode())


def test_alg_of_another_key_type_is_refused(key: ProofKey) -> None:
    ed = ProofKey("EdDSA")
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": ed.jwk}
    refused(
        "key", _unsigned(header, {"jti": "x", "htm": "POST", "htu": URL, "iat": NOW}, b"x" * 64)
    )
    header["jwk"], header["alg"] = key.jwk, "ES384"
    refused(
        "algorithm",
        _unsigned(header, {"jti": "x", "htm": "POST", "htu": URL, "iat": NOW}, b"x" * 96),
    )


def test_a_private_key_in_the_header_is_refused(key: ProofKey) -> None:
    private = dict(key.jwk, d="c2VjcmV0")
    refused("key", key.proof("POST", URL, iat=NOW, header={"jwk": private}))


def test_malformed_keys_are_refused(key: ProofKey) -> None:
    refused("key", key.proof("POST", URL, iat=NOW, header={"jwk": "not an object"}))
    refused("key", key.proof("POST", URL, iat=NOW, header={"jwk": dict(key.jwk, x=1)}))
    off_curve = dict(key.jwk, y=base64url_encode(b"\x01" * 32).decode())
    refused("key", key.proof("POST", URL, iat=NOW, header={"jwk": off_curve}))


def test_a_signature_by_another_key_than_the_header_s_is_refused(key: ProofKey) -> None:
    other = ProofKey()
    refused("signature", other.proof("POST", URL, iat=NOW, header={"jwk": key.jwk}))
    head, body, _ = key.proof("POST", URL, iat=NOW).split(".")
    _, _, signature = key.proof("POST", URL, iat=NOW + 1).split(".")
    refused("signature", f"{head}.{body}.{signature}")


def test_a_changed_claim_breaks_the_signature(key: ProofKey) -> None:
    head, _, signature = key.proof("POST", URL, iat=NOW).split(".")
    body = base64url_encode(json.dumps({"jti": "j", "htm": "GET", "htu": URL, "iat": NOW}).encode())
    refused("signature", f"{head}.{body.decode()}.{signature}")


@pytest.mark.parametrize("jti", [None, "", 5, "x" * 129])
def test_jti_is_required_and_bounded(key: ProofKey, jti: object) -> None:
    refused("malformed", key.proof("POST", URL, iat=NOW, claims={"jti": jti}))


def test_method_must_match(key: ProofKey) -> None:
    refused("method", key.proof("GET", URL, iat=NOW))
    refused("method", key.proof("post", URL, iat=NOW))
    refused("method", key.proof("POST", URL, iat=NOW, drop=("htm",)))


@pytest.mark.parametrize(
    "htu",
    [
        "https://evil.example/v1/chat/conversation/public/message",
        "http://chat.example/v1/chat/conversation/public/message",
        "https://chat.example:8443/v1/chat/conversation/public/message",
        "https://chat.example/v1/chat/conversation/public/messages",
        "/v1/chat/conversation/public/message",
        "https://user@chat.example/v1/chat/conversation/public/message",
    ],
)
def test_url_of_another_host_scheme_port_or_path_is_refused(key: ProofKey, htu: str) -> None:
    refused("url", key.proof("POST", htu, iat=NOW))


@pytest.mark.parametrize(
    "htu",
    [
        URL + "?stream=1",
        URL + "#top",
        "HTTPS://Chat.Example:443/v1/chat/conversation/public/message",
    ],
)
def test_url_is_compared_without_query_fragment_case_or_default_port(
    key: ProofKey, htu: str
) -> None:
    check(key.proof("POST", htu, iat=NOW))


def test_the_request_url_is_normalised_too(key: ProofKey) -> None:
    check(key.proof("POST", URL, iat=NOW), url=URL + "?a=b")
    assert normalize_url("https://[::1]:8443/x?y") == "https://[::1]:8443/x"
    assert normalize_url("ftp://host/") is None
    assert normalize_url("https://host:99999/") is None


@pytest.mark.parametrize("skew", [-61, 61, -3600, 86_400])
def test_iat_outside_the_window_is_refused(key: ProofKey, skew: int) -> None:
    refused("time", key.proof("POST", URL, iat=NOW + skew))


@pytest.mark.parametrize("skew", [-60, -1, 0, 30, 60])
def test_iat_inside_the_window_passes(key: ProofKey, skew: int) -> None:
    check(key.proof("POST", URL, iat=NOW + skew))


def test_the_window_is_configurable(key: ProofKey) -> None:
    proof = key.proof("POST", URL, iat=NOW - 20)
    with pytest.raises(ProofRejected):
        ProofVerifier(window_seconds=10).verify(proof, method="POST", url=URL, now=NOW)


@pytest.mark.parametrize("iat", ["1800000000", 1.8e9, True, None])
def test_iat_must_be_an_integer(key: ProofKey, iat: object) -> None:
    refused("time", key.proof("POST", URL, claims={"iat": iat}))


def test_ath_must_hash_the_presented_token(key: ProofKey) -> None:
    refused("token_hash", key.proof("POST", URL, iat=NOW), token=TOKEN)
    refused("token_hash", key.proof("POST", URL, iat=NOW, token="another"), token=TOKEN)
    assert token_hash(TOKEN) == base64url_encode(hashlib.sha256(TOKEN.encode()).digest()).decode()


def test_a_valid_proof_by_another_key_is_a_mismatch(key: ProofKey) -> None:
    other = ProofKey()
    with pytest.raises(ProofKeyMismatch):
        check(other.proof("POST", URL, iat=NOW, token=TOKEN), token=TOKEN, jkt=key.jkt)


def test_a_bad_proof_by_another_key_is_rejected_not_a_mismatch(key: ProofKey) -> None:
    other = ProofKey()
    refused("url", other.proof("POST", "https://evil.example/", iat=NOW), jkt=key.jkt)


def test_parsed_keys_are_cached_and_bounded() -> None:
    verifier = ProofVerifier(key_cache=2)
    keys = [ProofKey() for _ in range(3)]
    for k in keys:
        verifier.verify(k.proof("POST", URL, iat=NOW), method="POST", url=URL, now=NOW)
    assert list(verifier._keys) == [keys[1].jkt, keys[2].jkt]
    again = keys[1].proof("POST", URL, iat=NOW)
    assert verifier.verify(again, method="POST", url=URL, now=NOW).jkt == keys[1].jkt
    # served by its header, remembered as sent: now the most recently used
    assert [jkt for _, jkt, _ in verifier._heads.values()] == [keys[2].jkt, keys[1].jkt]


def test_replay_ttl_covers_the_rest_of_the_window(key: ProofKey) -> None:
    verifier = ProofVerifier(window_seconds=60)
    proof = verifier.verify(key.proof("POST", URL, iat=NOW + 30), method="POST", url=URL, now=NOW)
    assert verifier.replay_ttl_ms(proof, NOW) == 91_000
    # a replica whose clock is behind by up to the tokens' leeway still finds it
    behind = ProofVerifier(window_seconds=60, replay_margin_seconds=5)
    assert behind.replay_ttl_ms(proof, NOW) == 95_000
    assert len(proof.replay_id()) == 32


def test_a_real_clock_proof_passes(key: ProofKey) -> None:
    ProofVerifier().verify(key.proof("POST", URL), method="POST", url=URL, now=time.time())


def test_a_remembered_header_still_needs_its_signature(key: ProofKey) -> None:
    """The header cache keeps a checked header (type, alg, key): a proof with that header
    is still refused when its signature is not the header key's over this very body."""
    verifier = ProofVerifier()
    good = key.proof("POST", URL, iat=NOW)
    verifier.verify(good, method="POST", url=URL, now=NOW)
    head, _, signature = good.split(".")
    assert head in verifier._heads
    other = ProofKey()
    _, body, forged = other.proof("POST", URL, iat=NOW, header={"jwk": key.jwk}).split(".")
    for proof in (f"{head}.{body}.{forged}", f"{head}.{body}.{signature}", f"{head}.{body}."):
        with pytest.raises(ProofRejected) as caught:
            verifier.verify(proof, method="POST", url=URL, now=NOW)
        assert caught.value.reason in {"signature", "malformed"}


def test_a_refused_header_is_not_remembered_and_the_cache_is_bounded(key: ProofKey) -> None:
    verifier = ProofVerifier(key_cache=2)
    with pytest.raises(ProofRejected):
        verifier.verify(
            key.proof("POST", URL, iat=NOW, header={"typ": "JWT"}), method="POST", url=URL, now=NOW
        )
    assert not verifier._heads
    keys = [ProofKey() for _ in range(3)]
    for k in keys:
        verifier.verify(k.proof("POST", URL, iat=NOW), method="POST", url=URL, now=NOW)
    assert [jkt for _, jkt, _ in verifier._heads.values()] == [keys[1].jkt, keys[2].jkt]


NONCES = ProofNonces((b"s" * 32, b"t" * 32), 60)


def test_a_gateway_nonce_vouches_for_a_proof_whatever_its_iat(key: ProofKey) -> None:
    """RFC 9449 section 9: a client whose clock is wrong puts the gateway's ``DPoP-Nonce``
    in its proof; a valid nonce (its period or the next) stands for the time."""
    verifier = ProofVerifier(nonces=NONCES)
    nonce = NONCES.issue(NOW)
    for iat in (NOW - 600, NOW + 3600, 0):
        proof = verifier.verify(
            key.proof("POST", URL, iat=iat, claims={"nonce": nonce}),
            method="POST",
            url=URL,
            now=NOW + 59,
        )
        # remembered until the nonce expires (not from the client's iat)
        assert verifier.replay_ttl_ms(proof, NOW + 59) <= (120 + 1) * 1000
    later = NONCES.issue(NOW + 60)
    assert NONCES.valid_until(later, NOW + 60) == (NOW // 60 + 3) * 60


@pytest.mark.parametrize(
    "nonce",
    [
        "x",
        "",
        5,
        None,
        "12.AAAA",
        NONCES.issue(NOW - 130),  # two periods ago: expired
        NONCES.issue(NOW + 120),  # a future period
        ProofNonces((b"u" * 32,), 60).issue(NOW),  # another gateway's
        NONCES.issue(NOW) + "A",
        "-1." + NONCES.issue(NOW).split(".")[1],
        "².AAAA",  # a digit to str.isdigit(), not to int()
        f"{NOW // 60}." + "é" * 22,  # compare_digest refuses non-ASCII strings
        f"{NOW // 60}." + NONCES.issue(NOW).split(".")[1] + "==",
        "١٢." + NONCES.issue(NOW).split(".")[1],  # Arabic-Indic digits: int() reads them
    ],
)
def test_a_bad_or_stale_nonce_is_refused_whatever_the_iat(key: ProofKey, nonce: object) -> None:
    verifier = ProofVerifier(nonces=NONCES)
    with pytest.raises(ProofRejected) as caught:
        verifier.verify(
            key.proof("POST", URL, iat=NOW, claims={"nonce": nonce}),
            method="POST",
            url=URL,
            now=NOW,
        )
    assert caught.value.reason == "nonce"


def test_a_nonce_is_refused_where_none_are_given_and_survives_key_rotation(key: ProofKey) -> None:
    refused("nonce", key.proof("POST", URL, iat=NOW, claims={"nonce": NONCES.issue(NOW)}))
    rotated = ProofNonces((b"t" * 32,), 60)  # the old signing key still in the set
    assert rotated.valid_until(ProofNonces((b"t" * 32, b"s" * 32), 60).issue(NOW), NOW)
    assert NONCES.valid_until(rotated.issue(NOW), NOW)  # signed by a verifying key


def test_a_nonce_from_a_replica_ahead_passes_within_the_margin(key: ProofKey) -> None:
    """A replica whose clock is ahead (by up to the tokens' leeway) hands out the next
    period's nonce a little early: the others take it, not earlier than that."""
    behind = ProofNonces((b"s" * 32,), 60, margin_seconds=5)
    start = (NOW // 60 + 1) * 60  # the next period's first second
    ahead = behind.issue(start)
    assert behind.valid_until(ahead, start - 5) == start + 120
    assert behind.valid_until(ahead, start - 6) is None
    assert ProofNonces((b"s" * 32,), 60).valid_until(ahead, start - 1) is None
