"""forkrl.rollout.verifier: the reward-verifier service (math via math-verify, code in a sandbox).

Library use: `verify_item(item, config)` scores one item in this process (math needs the main thread);
`create_app(config)` builds the FastAPI service; `VerifierClient` talks to a running one.
Service: `python -m forkrl.rollout.verifier --host 127.0.0.1 --port 8000`.

Names are imported lazily so that importing the configs (e.g. from the trainer's job spec) does not
pull in FastAPI, httpx or math-verify.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "VerifierClient": "client",
    "VerifierError": "client",
    "VerifierProtocolError": "client",
    "VerifierRequestError": "client",
    "VerifierUnavailable": "client",
    "CodeRewardConfig": "config",
    "MathRewardConfig": "config",
    "SandboxConfig": "config",
    "VerifierConfig": "config",
    "CallCase": "schemas",
    "CallTests": "schemas",
    "CodeItem": "schemas",
    "MathItem": "schemas",
    "Reason": "schemas",
    "RewardValues": "schemas",
    "StdioCase": "schemas",
    "StdioTests": "schemas",
    "VerifyRequest": "schemas",
    "VerifyResponse": "schemas",
    "VerifyResult": "schemas",
    "verify_item": "scoring",
    "WorkerPool": "pool",
    "create_app": "server",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
