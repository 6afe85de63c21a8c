"""The shapes of the identifiers the gateway issues or is configured with.

A client token carries a conversation id, a model id, an agent key id and a token id;
each one later goes into an upstream header, a store key or a log line. The token codec
refuses a token whose claims have any other shape, even when its signature is good (a
leaked or misused signing key must not become header injection upstream).

The patterns are unanchored: match them with ``fullmatch`` (``$`` would accept a
trailing newline).
"""

from __future__ import annotations

import re
import secrets
import uuid

from gateway.core.agent_keys import KEY_ID_LEN
from gateway.core.fingerprint import FINGERPRINT_CHARS

#: a configured model id (``models:`` in the configuration, policies, token claims)
MODEL_ID = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"
#: what :func:`new_conversation_id` writes: a UUID in its canonical lowercase form
CONVERSATION_ID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
#: what :func:`new_token_id` writes (22 characters), with room for longer random ids
TOKEN_ID = r"[A-Za-z0-9_-]{16,64}"
#: the public part of an agent key (:mod:`gateway.core.agent_keys`)
KEY_ID = rf"[0-9A-Za-z]{{{KEY_ID_LEN}}}"
#: a client fingerprint (:mod:`gateway.core.fingerprint`): lowercase hex
FINGERPRINT = rf"[0-9a-f]{{{FINGERPRINT_CHARS}}}"

#: a key's RFC 7638 thumbprint (``cnf.jkt``): base64url SHA-256, unpadded
KEY_THUMBPRINT = r"[A-Za-z0-9_-]{43}"

MODEL_ID_SHAPE = re.compile(MODEL_ID)
CONVERSATION_ID_SHAPE = re.compile(CONVERSATION_ID)
TOKEN_ID_SHAPE = re.compile(TOKEN_ID)
KEY_ID_SHAPE = re.compile(KEY_ID)
FINGERPRINT_SHAPE = re.compile(FINGERPRINT)
KEY_THUMBPRINT_SHAPE = re.compile(KEY_THUMBPRINT)


def new_conversation_id() -> str:
    return str(uuid.uuid4())


def new_token_id() -> str:
    """128 random bits, base64url."""
    return secrets.token_urlsafe(16)
