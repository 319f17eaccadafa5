"""The job's control token: a shared secret that the learner side (controller, weight senders) proves to
the rollout replicas before it may change their state, and that the replicas prove back at the weight-sync
rendezvous before they take tensors from a sender.

On Kubernetes the operator generates one per RLVRJob into the Secret `<job>-control` and hands it to the
rollout pods and the controller as CONTROL_TOKEN_ENV. An embedded run that starts all of its replicas makes
one up for itself. A replica started without a token serves its control endpoints to anyone who can reach
it (fine on loopback, said loudly elsewhere). Torch-free: the operator imports the names.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping

CONTROL_TOKEN_ENV = "FORKRL_CONTROL_TOKEN"
CONTROL_SECRET_KEY = "token"
"""Key of the token in the job's Secret."""
BEARER = "Bearer "
MIN_TOKEN_CHARS = 16


def new_control_token() -> str:
    """256 random bits, URL-safe text (43 characters)."""
    return secrets.token_urlsafe(32)


def control_token_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The token in CONTROL_TOKEN_ENV, None when unset or empty; a short one is refused (a typo, not a secret)."""
    token = (os.environ if environ is None else environ).get(CONTROL_TOKEN_ENV, "").strip()
    if not token:
        return None
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"{CONTROL_TOKEN_ENV}: a control token needs at least {MIN_TOKEN_CHARS} characters, "
                         f"got {len(token)}")
    return token


def bearer_header(token: str | None) -> dict[str, str]:
    """The Authorization header carrying `token` ({} without one)."""
    return {"Authorization": BEARER + token} if token else {}


def authorized(authorization: str | None, token: str | None) -> bool:
    """Whether an Authorization header value proves `token` (always true when no token is required)."""
    if token is None:
        return True
    if not authorization or not authorization.startswith(BEARER):
        return False
    return hmac.compare_digest(authorization[len(BEARER):].encode(), token.encode())


def proof(token: str, *parts: str) -> str:
    """HMAC-SHA256 of `parts` under `token` (hex): shows knowledge of the token without sending it."""
    message = "\x1f".join(parts).encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()
