"""A server-side client of the public agent API that speaks DPoP (RFC 9449).

It holds a P-256 key, asks for a client token with a proof (the token is then bound to
the key: ``cnf.jkt``), sends messages and renews the token, each request with a fresh
proof signed by that key. A token copied from it is useless to anyone without the key.

Only the standard library and ``cryptography``::

    python docs/examples/dpop_client.py --gateway http://127.0.0.1:8080 \\
        --key "$AGENT_KEY" --model demo "Hello" "How are you?"

Each answer is printed on its own line; the token is renewed between messages.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import secrets
import time
import urllib.error
import urllib.request
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

TOKEN_PATH = "/v1/chat/conversation/public/message/token/{model}"
SEND_PATH = "/v1/chat/conversation/public/message"
REFRESH_PATH = "/v1/chat/conversation/public/token/refresh"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class DPoPKey:
    """A P-256 key pair and the proofs it signs."""

    def __init__(self) -> None:
        self._private = ec.generate_private_key(ec.SECP256R1())
        numbers = self._private.public_key().public_numbers()
        self.jwk = {
            "crv": "P-256",
            "kty": "EC",
            "x": b64url(numbers.x.to_bytes(32, "big")),
            "y": b64url(numbers.y.to_bytes(32, "big")),
        }
        canonical = json.dumps(self.jwk, sort_keys=True, separators=(",", ":")).encode()
        #: the RFC 7638 thumbprint: what the gateway writes into the token as cnf.jkt
        self.thumbprint = b64url(hashlib.sha256(canonical).digest())
        #: seconds this machine's clock is off (to try the gateway's DPoP-Nonce)
        self.clock_offset = 0.0

    def proof(
        self, method: str, url: str, token: str | None = None, nonce: str | None = None
    ) -> str:
        header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk}
        claims: dict[str, Any] = {
            "jti": secrets.token_urlsafe(16),
            "htm": method,
            "htu": url.split("?", 1)[0].split("#", 1)[0],
            "iat": int(time.time() + self.clock_offset),
        }
        if nonce is not None:  # the gateway's DPoP-Nonce: it vouches for the time
            claims["nonce"] = nonce
        if token is not None:
            claims["ath"] = b64url(hashlib.sha256(token.encode()).digest())
        signing_input = ".".join(
            b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        der = self._private.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)  # JWS wants r and s back to back, 32 bytes each
        return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


class Client:
    def __init__(self, gateway: str, agent_key: str, model: str) -> None:
        if not gateway.startswith(("http://", "https://")):
            raise SystemExit("--gateway must be an http(s) URL")
        self.gateway = gateway.rstrip("/")
        self.agent_key = agent_key
        self.model = model
        self.key = DPoPKey()
        self.token = ""
        #: the gateway's latest DPoP-Nonce, once it asked for one (RFC 9449 section 9)
        self.nonce: str | None = None

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, **headers: str
    ) -> dict[str, Any]:
        url = self.gateway + path
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in range(2):
            headers["DPoP"] = self.key.proof(method, url, self.token or None, self.nonce)
            request = urllib.request.Request(url, data, headers, method=method)  # noqa: S310 (http(s), checked)
            try:
                with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
                    answer: dict[str, Any] = json.loads(resp.read())
                    # a fresh nonce comes with each answer to a proof that carried one
                    self.nonce = resp.headers.get("DPoP-Nonce") or self.nonce
                    return answer
            except urllib.error.HTTPError as err:
                problem = json.loads(err.read() or b"{}")
                # RFC 9449 section 9: the gateway wants its nonce in the proof (this
                # machine's clock is off): once more with it
                challenge = err.headers.get("WWW-Authenticate", "")
                nonce = err.headers.get("DPoP-Nonce")
                if attempt or err.code != 401 or "use_dpop_nonce" not in challenge or not nonce:
                    raise SystemExit(f"{method} {path}: {err.code} {problem.get('code')}") from None
                self.nonce = nonce
        raise AssertionError("unreachable")

    def start(self) -> None:
        path = TOKEN_PATH.format(model=self.model)
        self.token = ""  # no token yet: the proof carries no ath
        answer = self._call("GET", path, Authorization=f"Bearer {self.agent_key}")
        self.token = answer["token"]

    def say(self, message: str) -> str:
        answer = self._call("POST", SEND_PATH, {"client_token": self.token, "message": message})
        return str(answer.get("answer", answer))

    def renew(self) -> None:
        self.token = self._call("POST", REFRESH_PATH, {"client_token": self.token})["token"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", default="http://127.0.0.1:8080")
    parser.add_argument("--key", required=True, help="a public agent key")
    parser.add_argument("--model", default="demo")
    parser.add_argument(
        "--clock-offset",
        type=float,
        default=0.0,
        help="sign as if this machine's clock were off by this many seconds (the "
        "gateway's DPoP-Nonce then vouches for the time)",
    )
    parser.add_argument("messages", nargs="+")
    args = parser.parse_args()
    client = Client(args.gateway, args.key, args.model)
    client.key.clock_offset = args.clock_offset
    client.start()
    for index, message in enumerate(args.messages):
        if index:
            client.renew()
        print(client.say(message), flush=True)


if __name__ == "__main__":
    main()
