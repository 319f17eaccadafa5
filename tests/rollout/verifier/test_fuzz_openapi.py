"""Schemathesis fuzzing of the live service against its own OpenAPI schema: never a 5xx.

Positive cases (schema-valid) must also conform to the documented responses; negative cases
(schema-violating) must be refused with a 4xx, never crash the service.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.rollout.verifier.conftest import ServerProcess

POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
# GET operations take no input, so only POST /v1/verify gets schema-violating (negative) cases.
CASES = [
    ("/v1/verify", "POST", POSITIVE),
    ("/v1/verify", "POST", NEGATIVE),
    ("/healthz", "GET", POSITIVE),
    ("/readyz", "GET", POSITIVE),
    ("/metrics", "GET", POSITIVE),
    ("/v1/info", "GET", POSITIVE),
]


@pytest.mark.parametrize(("path", "method", "mode"), CASES, ids=[f"{m} {p} {g.value}" for p, m, g in CASES])
def test_no_server_errors(verifier_server: ServerProcess, path: str, method: str, mode: GenerationMode) -> None:
    api = schemathesis.openapi.from_url(f"{verifier_server.url}/openapi.json")
    operation = api[path][method]
    # Derandomized: the same cases every run, so more examples buy coverage only once; 30 keep the
    # module near a minute of CPU (each case costs the client schema generation and the server a parse).
    examples = 30 if path == "/v1/verify" else 5

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=verifier_server.url, timeout=120)
        assert response.status_code < 500, f"{method} {path} -> {response.status_code}: {response.text[:500]}"
        if mode == POSITIVE:
            case.validate_response(response)
        else:
            assert 400 <= response.status_code < 500, f"invalid input accepted: {response.status_code}"

    check()
