import base64
import gc
import hashlib
import hmac
import json
from collections.abc import Iterator
from types import ModuleType

import jwt
import pytest

from gateway.core.signing_keys import (
    KeySet,
    SigningKey,
    SigningKeyError,
    parse_keyset,
)
from gateway.core.token_codec import TokenCodec, TokenRejected, VerifiedToken

JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
NOW = 1_800_000_000.0
OLD = SigningKey("old", b"o" * 40)
NEW = SigningKey("new", b"n" * 40)


def codec(*keys: SigningKey, ttl: int = 900, algorithm: str = "HS256") -> TokenCodec:
    return TokenCodec(
        KeySet(keys or (OLD,)),
        issuer="agent-gateway",
        audience="public-agent-api",
        ttl_seconds=ttl,
        algorithm=algorithm,
        leeway_seconds=5,
    )


def rejected(c: TokenCodec, token: str, now: float = NOW) -> str:
    with pytest.raises(TokenRejected) as info:
        c.decode(token, now)
    return info.value.code


def test_issue_and_decode_round_trip() -> None:
    c = codec()
    issued = c.issue(key_id="KEYID0000001", model_id="demo", now=NOW)
    claims = c.decode(issued.token, NOW + 10)
    assert claims == issued.claims
    assert claims.expires_at == int(NOW) + 900
    assert claims.model_id == "demo" and claims.key_id == "KEYID0000001"
    assert len(claims.jti) >= 22 and claims.conversation_id
    header = jwt.get_unverified_header(issued.token)
    assert header["kid"] == "old" and header["alg"] == "HS256"
    payload = jwt.decode(issued.token, options={"verify_signature": False})
    assert {"iss", "aud", "iat", "nbf", "exp", "jti", "cid", "mid", "akid"} <= set(payload)


def test_each_token_gets_its_own_conversation_and_jti() -> None:
    c = codec()
    a = c.issue(key_id="K" * 12, model_id="demo", now=NOW).claims
    b = c.issue(key_id="K" * 12, model_id="demo", now=NOW).claims
    assert a.jti != b.jti and a.conversation_id != b.conversation_id


def test_fingerprint_claim_when_bound_at_issue() -> None:
    c = codec()
    issued = c.issue(key_id="K" * 12, model_id="demo", now=NOW, fingerprint="f" * 16)
    assert c.decode(issued.token, NOW).fingerprint == "f" * 16


def test_key_confirmation_when_bound_to_a_key_and_kept_by_renewal() -> None:
    c = codec()
    issued = c.issue(key_id="K" * 12, model_id="demo", now=NOW, jkt=JKT)
    assert c.decode(issued.token, NOW).jkt == JKT
    claims = jwt.decode(
        issued.token, OLD.secret, algorithms=["HS256"], audience="public-agent-api",
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )  # fmt: skip
    assert claims["cnf"] == {"jkt": JKT}
    renewed = c.renew(issued.claims, jti="R" * 22, issued_at=int(NOW) + 1, fingerprint=None)
    assert c.decode(renewed.token, NOW + 1).jkt == JKT
    plain = c.issue(key_id="K" * 12, model_id="demo", now=NOW)
    assert c.decode(plain.token, NOW).jkt is None
    assert "cnf" not in jwt.decode(plain.token, options={"verify_signature": False})


def test_expiry_uses_the_callers_clock_with_leeway() -> None:
    c = codec(ttl=60)
    token = c.issue(key_id="K" * 12, model_id="demo", now=NOW).token
    assert c.decode(token, NOW + 64).jti
    assert rejected(c, token, NOW + 65) == "token_expired"


def test_not_yet_valid_is_refused() -> None:
    c = codec()
    token = c.issue(key_id="K" * 12, model_id="demo", now=NOW + 100).token
    assert rejected(c, token, NOW) == "token_invalid"


def test_rotation_new_key_signs_old_key_still_verifies() -> None:
    before = codec(OLD)
    old_token = before.issue(key_id="K" * 12, model_id="demo", now=NOW).token
    after = codec(NEW, OLD)
    new_token = after.issue(key_id="K" * 12, model_id="demo", now=NOW).token
    assert jwt.get_unverified_header(new_token)["kid"] == "new"
    assert after.decode(old_token, NOW).jti
    assert after.decode(new_token, NOW).jti
    # once the old key is removed, its tokens stop working
    assert rejected(codec(NEW), old_token) == "token_invalid"


def _forge(header: dict[str, object], payload: dict[str, object], sig: bytes = b"") -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(sig)])


def _payload(c: TokenCodec) -> dict[str, object]:
    token = c.issue(key_id="K" * 12, model_id="demo", now=NOW).token
    return dict(jwt.decode(token, options={"verify_signature": False}))


def test_alg_none_is_refused() -> None:
    c = codec()
    assert rejected(c, _forge({"alg": "none", "kid": "old"}, _payload(c))) == "token_invalid"


def test_other_algorithm_with_same_secret_is_refused() -> None:
    long_key = SigningKey("old", b"o" * 64)
    c = codec(long_key)
    token = jwt.encode(_payload(c), long_key.secret, algorithm="HS512", headers={"kid": "old"})
    assert rejected(c, token) == "token_invalid"


def test_unknown_kid_and_missing_kid_are_refused() -> None:
    c = codec()
    payload = _payload(c)
    assert rejected(c, jwt.encode(payload, OLD.secret, headers={"kid": "zz"})) == "token_invalid"
    assert rejected(c, jwt.encode(payload, OLD.secret)) == "token_invalid"


def test_tampered_payload_is_refused() -> None:
    c = codec()
    token = c.issue(key_id="K" * 12, model_id="demo", now=NOW).token
    head, body, sig = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=="))
    payload["mid"] = "premium"
    forged_body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    assert rejected(c, f"{head}.{forged_body}.{sig}") == "token_invalid"


@pytest.mark.parametrize(
    "change",
    [{"aud": "someone-else"}, {"iss": "another-issuer"}, {"cid": 42}, {"akid": ""}],
)
def test_wrong_audience_issuer_or_claims_are_refused(change: dict[str, object]) -> None:
    c = codec()
    payload = {**_payload(c), **change}
    token = jwt.encode(payload, OLD.secret, headers={"kid": "old"})
    assert rejected(c, token) == "token_invalid"


def test_missing_required_claim_is_refused() -> None:
    c = codec()
    payload = _payload(c)
    del payload["jti"]
    assert rejected(c, jwt.encode(payload, OLD.secret, headers={"kid": "old"})) == "token_invalid"


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "x" * 5000, "eyJ.eyJ.sig"])
def test_garbage_is_refused(garbage: str) -> None:
    assert rejected(codec(), garbage) == "token_invalid"


def test_keyset_parsing_and_errors() -> None:
    keys = parse_keyset("new:" + "n" * 32 + "\n# comment\nold:" + "o" * 40, "env")
    assert [k.kid for k in keys.keys] == ["new", "old"]
    assert keys.active.kid == "new"
    with pytest.raises(SigningKeyError, match="shorter than 32 bytes"):
        parse_keyset("a:short", "env")
    with pytest.raises(SigningKeyError, match="duplicate kid"):
        parse_keyset(f"a:{'x' * 32},a:{'y' * 32}", "env")
    with pytest.raises(SigningKeyError, match="expected 'kid:secret'"):
        parse_keyset("no-colon-here", "env")


def test_secret_shorter_than_the_algorithm_needs_is_refused() -> None:
    with pytest.raises(SigningKeyError, match="HS512 needs at least 64"):
        codec(OLD, algorithm="HS512")


# -- the fast path for the codec's own tokens agrees with pyjwt ---------------------------
def _signed(c: TokenCodec, payload_json: bytes, key: SigningKey = OLD) -> str:
    """A token with the codec's own header and any payload bytes, validly signed."""
    head = c.issue(key_id="K" * 12, model_id="demo", now=NOW).token.split(".")[0]
    body = base64.urlsafe_b64encode(payload_json).rstrip(b"=").decode()
    sig = hmac.new(key.secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"


def _with(c: TokenCodec, **change: object) -> str:
    return jwt.encode({**_payload(c), **change}, OLD.secret, headers={"kid": "old"})


def _outcome(c: TokenCodec, decode: object, token: str) -> tuple[str, object]:
    try:
        return "ok", decode(token, NOW)  # type: ignore[operator]
    except TokenRejected as exc:
        return "rejected", exc.code


FAST_PATH_CASES = {
    "issued": lambda c: c.issue(key_id="K" * 12, model_id="demo", now=NOW).token,
    "aud list with ours": lambda c: _with(c, aud=["x", "public-agent-api"]),
    "aud list without ours": lambda c: _with(c, aud=["x"]),
    "aud empty": lambda c: _with(c, aud=""),
    "aud list with a number": lambda c: _with(c, aud=["public-agent-api", 3]),
    "iss not a string": lambda c: _signed(c, json.dumps({**_payload(c), "iss": 7}).encode()),
    "sub a string": lambda c: _with(c, sub="someone"),
    "sub a number": lambda c: _with(c, sub=7),
    "jti a number": lambda c: _with(c, jti=7),
    "null claim": lambda c: _with(c, cid=None),
    "huge number": lambda c: _with(c, iat=10**30),
    "payload not an object": lambda c: _signed(c, b"[1, 2]"),
    "payload not json": lambda c: _signed(c, b"{nope"),
    "signature padded": lambda c: c.issue(key_id="K" * 12, model_id="demo", now=NOW).token + "=",
    "four segments": lambda c: c.issue(key_id="K" * 12, model_id="demo", now=NOW).token + ".x",
    "extra header field": lambda c: jwt.encode(
        _payload(c), OLD.secret, headers={"kid": "old", "x": 1}
    ),
    "wrong key": lambda c: jwt.encode(_payload(c), b"w" * 40, headers={"kid": "old"}),
    "issued with cnf.jkt": lambda c: (
        c.issue(key_id="K" * 12, model_id="demo", now=NOW, jkt=JKT).token
    ),
    "cnf.jkt": lambda c: _with(c, cnf={"jkt": JKT}),
    "cnf null": lambda c: _with(c, cnf=None),
    "cnf with another member": lambda c: _with(c, cnf={"jkt": JKT, "x5t#S256": "a"}),
    "cnf a string": lambda c: _with(c, cnf=JKT),
}


@pytest.mark.parametrize("case", sorted(FAST_PATH_CASES))
def test_fast_path_and_pyjwt_agree(case: str) -> None:
    c = codec(NEW, OLD)
    token = FAST_PATH_CASES[case](c)

    def pyjwt_only(token: str, now: float) -> object:
        claims, not_before = c._parse(c._pyjwt_claims(token))
        return c._in_time(VerifiedToken(claims, not_before, ""), now).claims

    assert _outcome(c, c.decode, token) == _outcome(c, pyjwt_only, token)


def test_fast_path_takes_the_codecs_own_tokens() -> None:
    c = codec(NEW, OLD)
    assert c._own_claims(c.issue(key_id="K" * 12, model_id="demo", now=NOW).token) is not None
    assert c._own_claims(_with(c)) is not None  # signed by the older key of the set
    assert c._own_claims(FAST_PATH_CASES["extra header field"](c)) is None


def test_issued_tokens_are_what_pyjwt_writes_and_reads() -> None:
    c = codec(NEW, OLD)
    issued = c.issue(key_id="K" * 12, model_id="demo", now=NOW, fingerprint="f" * 16)
    assert jwt.get_unverified_header(issued.token) == {"alg": "HS256", "kid": "new", "typ": "JWT"}
    claims = jwt.decode(
        issued.token, NEW.secret, algorithms=["HS256"], audience="public-agent-api",
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )  # fmt: skip
    assert claims["jti"] == issued.claims.jti and claims["fph"] == "f" * 16
    assert (
        issued.token.split(".")[0]
        == jwt.encode({}, NEW.secret, headers={"kid": "new"}).split(".")[0]
    )


def test_a_remembered_token_still_expires_and_still_waits_for_its_start() -> None:
    c = codec(NEW, OLD, ttl=60)
    token = c.issue(key_id="K" * 12, model_id="demo", now=NOW).token
    assert c.decode(token, NOW).jti == c.decode(token, NOW + 30).jti  # the second, remembered
    with pytest.raises(TokenRejected) as expired:
        c.decode(token, NOW + 60 + c.leeway_seconds)
    assert expired.value.code == "token_expired"
    early = _with(c, nbf=int(NOW) + 10)
    for _ in range(2):
        with pytest.raises(TokenRejected) as too_early:
            c.decode(early, NOW)
        assert too_early.value.code == "token_invalid"
    assert c.decode(early, NOW + 10).key_id


def test_only_tokens_that_pass_are_remembered_and_their_number_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.core import token_codec

    monkeypatch.setattr(token_codec, "VERIFIED_CACHE", 5)
    c = codec(NEW, OLD)
    forged = FAST_PATH_CASES["wrong key"](c)
    for _ in range(2):
        with pytest.raises(TokenRejected):
            c.decode(forged, NOW)
    assert c._key(forged) not in c._verified
    tokens = [c.issue(key_id="K" * 12, model_id="demo", now=NOW).token for _ in range(8)]
    for token in tokens:
        c.decode(token, NOW)
    assert list(c._verified) == [c._key(t) for t in tokens[-5:]]  # the oldest go first
    assert c.decode(tokens[0], NOW).jti  # forgotten, verified again


#: claims with a good signature but a shape this gateway never issues: each would reach
#: an upstream header, a store key or a log line if it were believed
FOREIGN_SHAPES = {
    "cid with CR/LF": {"cid": "c0ffee00-0000-4000-8000-000000000000\r\nX-Injected: 1"},
    "cid with LF only": {"cid": "c0ffee00-0000-4000-8000-000000000000\n"},
    "cid not a uuid": {"cid": "../../admin"},
    "cid uppercase uuid": {"cid": "C0FFEE00-0000-4000-8000-000000000000"},
    "mid with CR/LF": {"mid": "demo\r\nX-Injected: 1"},
    "mid with a space": {"mid": "demo model"},
    "mid too long": {"mid": "m" * 129},
    "akid with CR/LF": {"akid": "KKKKKKKKKKKK\r\n"},
    "akid wrong length": {"akid": "K" * 13},
    "jti with CR/LF": {"jti": "A" * 22 + "\r\nX: y"},
    "jti too short": {"jti": "short"},
    "fph with CR/LF": {"fph": "f" * 16 + "\n"},
    "fph not hex": {"fph": "z" * 16},
    "cnf.jkt with CR/LF": {"cnf": {"jkt": JKT + "\r\n"}},
    "cnf.jkt too short": {"cnf": {"jkt": JKT[:-1]}},
    "cnf.jkt padded": {"cnf": {"jkt": JKT[:-1] + "="}},
    "cnf.jkt a number": {"cnf": {"jkt": 7}},
}


@pytest.mark.parametrize("case", sorted(FOREIGN_SHAPES))
@pytest.mark.parametrize("path", ["fast", "pyjwt"])
def test_claims_of_a_shape_never_issued_are_refused(case: str, path: str) -> None:
    c = codec(NEW, OLD)
    payload = {**_payload(c), **FOREIGN_SHAPES[case]}
    headers = {"kid": "old"} if path == "fast" else {"kid": "old", "x": 1}
    token = jwt.encode(payload, OLD.secret, headers=headers)
    assert (c._own_claims(token) is not None) == (path == "fast")
    assert rejected(c, token) == "token_invalid"
    assert c._key(token) not in c._verified


def test_issued_ids_have_the_shapes_the_codec_accepts() -> None:
    from gateway.core import identifiers

    c = codec()
    longest_model = "M" + "m.o-d:e_l" * 14  # 127 characters of every allowed kind
    for _ in range(50):
        issued = c.issue(key_id="K" * 12, model_id=longest_model, now=NOW, fingerprint="0" * 16)
        assert identifiers.CONVERSATION_ID_SHAPE.fullmatch(issued.claims.conversation_id)
        assert identifiers.TOKEN_ID_SHAPE.fullmatch(issued.claims.jti)
        assert c.decode(issued.token, NOW) == issued.claims


def reachable(root: object) -> Iterator[object]:
    """Every object reachable from ``root`` through containers and attributes."""
    seen: set[int] = set()
    todo = [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, type | ModuleType) or callable(obj):
            continue
        seen.add(id(obj))
        yield obj
        if isinstance(obj, dict):
            todo += [*obj.keys(), *obj.values()]
        elif isinstance(obj, list | tuple | set | frozenset):
            todo += list(obj)
        elif not isinstance(obj, str | bytes | int | float | bool | type(None)):
            todo += [
                getattr(obj, name) for name in getattr(obj, "__slots__", ()) if hasattr(obj, name)
            ]
            todo += list(getattr(obj, "__dict__", {}).values())


def test_the_codec_keeps_no_client_token_in_memory() -> None:
    c = codec(NEW, OLD)
    tokens = [c.issue(key_id="K" * 12, model_id="demo", now=NOW).token for _ in range(3)]
    other_header = {"kid": "old", "x": 1}  # verified by pyjwt, not the fast path
    tokens.append(jwt.encode({**_payload(c), "fph": "0" * 16}, OLD.secret, headers=other_header))
    for token in tokens:
        c.decode(token, NOW)
        c.decode(token, NOW + 1)  # from the cache
    assert len(c._verified) == len(tokens)
    segments = [segment for t in tokens for segment in t.split(".")[1:]]  # claims, signature
    for obj in reachable(c):
        if isinstance(obj, str | bytes):
            text = obj if isinstance(obj, str) else obj.decode("latin-1")
            assert not any(s in text for s in segments), "a client token is kept"
    for token in tokens:
        assert not any(r is c._verified or r is c.__dict__ for r in gc.get_referrers(token))


def test_the_state_layout_claim_is_carried_by_renewals_and_checked() -> None:
    """``shd``: absent for a conversation under the store's one tag, else its number of
    shards (1, or a hot key's sub-buckets); a renewal keeps it; anything else signed with
    the right key is still not a layout this gateway writes."""
    c = codec()
    plain = c.issue(key_id="K" * 12, model_id="demo", now=NOW)
    assert "shd" not in _payload(c) and plain.claims.shards == 0
    hot = c.issue(key_id="K" * 12, model_id="demo", now=NOW, shards=12)
    assert c.decode(hot.token, NOW).shards == 12
    renewed = c.renew(hot.claims, jti="j" * 22, issued_at=int(NOW) + 60, fingerprint=None)
    assert c.decode(renewed.token, NOW + 60).shards == 12
    assert (
        c.renew(plain.claims, jti="k" * 22, issued_at=int(NOW), fingerprint=None).claims.shards == 0
    )
    for bad in (0, 65, True, "1", 1.5):
        payload = {**_payload(c), "shd": bad}
        token = jwt.encode(payload, OLD.secret, headers={"kid": "old"})
        assert rejected(c, token) == "token_invalid", bad
