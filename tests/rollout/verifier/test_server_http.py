"""HTTP round trips against a real verifier process on 127.0.0.1: scoring, 422s, metrics, worker crash."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from forkrl.rollout.verifier.client import VerifierClient
from forkrl.rollout.verifier.schemas import Reason
from tests.rollout.verifier.conftest import ServerProcess, ancestors, sandbox_processes

CODE_DOUBLE = "```python\nprint(int(input()) * 2)\n```"


def _math(item_id: str, response: str, gold: str, **extra: object) -> dict:
    return {"task": "math", "id": item_id, "response": response, "ground_truth": gold, **extra}


def _stdio(item_id: str, program: str, cases: list[tuple[str, str]], **extra: object) -> dict:
    tests = {"style": "stdio", "cases": [{"input": i, "output": o} for i, o in cases]}
    return {"task": "code", "id": item_id, "response": program, "tests": tests, **extra}


def _metric(server: ServerProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_health_readiness_and_openapi(verifier_server: ServerProcess) -> None:
    assert httpx.get(f"{verifier_server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{verifier_server.url}/readyz").json()
    assert ready == {"status": "ready", "workers": 2}
    spec = httpx.get(f"{verifier_server.url}/openapi.json").json()
    assert {"/v1/verify", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    assert {"MathItem", "CodeItem", "VerifyResult"} <= set(spec["components"]["schemas"])
    info = httpx.get(f"{verifier_server.url}/v1/info").json()
    assert [row["alive"] for row in info["workers"]] == [True, True]
    assert all(row["isolation"]["python"] for row in info["workers"])


def test_batch_round_trip_in_order(verifier_server: ServerProcess) -> None:
    items = [
        _math("m1", r"so $\boxed{\dfrac{1}{2}}$", "0.5"),
        _stdio("c1", CODE_DOUBLE, [("3", "6"), ("4", "8")]),
        _math("m2", "...\nAnswer: 41", "42", extraction="dapo"),
        _math("m3", r"\boxed{2\sqrt{3}}", r"\sqrt{12}"),
        _stdio("c2", CODE_DOUBLE, [("3", "7")], rewards={"correct": 1.0, "incorrect": -1.0}),
        _math("m4", "no final answer", "1"),
    ]
    response = httpx.post(f"{verifier_server.url}/v1/verify", json={"items": items}, timeout=60)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["id"] for r in results] == ["m1", "c1", "m2", "m3", "c2", "m4"]
    got = [(r["reward"], r["correct"], r["reason"]) for r in results]
    assert got == [
        (1.0, True, "ok"),
        (1.0, True, "ok"),
        (-1.0, False, "wrong_answer"),
        (1.0, True, "ok"),
        (-1.0, False, "wrong_answer"),
        (0.0, False, "no_answer"),
    ]
    assert results[1]["tests_passed"] == 2 and results[0]["method"] == "fast_path"
    assert results[3]["method"] == "math_verify"
    assert all(r["latency_s"] >= 0 for r in results)


def test_malformed_requests_name_the_field(verifier_server: ServerProcess) -> None:
    url = f"{verifier_server.url}/v1/verify"
    missing = httpx.post(url, json={"items": [{"task": "math", "id": "x", "response": "r"}]})
    assert missing.status_code == 422
    assert "items[0].math.ground_truth" in missing.json()["fields"]
    extra = httpx.post(url, json={"items": [_math("x", "r", "1", colour="red")]})
    assert extra.status_code == 422 and "items[0].math.colour" in extra.json()["fields"]
    bad_task = httpx.post(url, json={"items": [{"task": "poetry", "id": "x", "response": "r"}]})
    assert bad_task.status_code == 422 and bad_task.json()["fields"] == ["items[0]"]
    bad_fn = _stdio("x", "r", [("", "")])
    bad_fn["tests"] = {"style": "call", "fn_name": "not an identifier", "cases": [{"args": [], "expected": 1}]}
    assert "items[0].code.tests.call.fn_name" in httpx.post(url, json={"items": [bad_fn]}).json()["fields"]
    empty = httpx.post(url, json={"items": []})
    assert empty.status_code == 422 and empty.json()["fields"] == ["items"]
    not_json = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert not_json.status_code == 422
    # A boolean is not a number (lax coercion would score `false` as a reward of 0); an integer is.
    for field, value in (("rewards", {"correct": False}), ("timeout_s", True)):
        coerced = httpx.post(url, json={"items": [_math("x", "r", "1", **{field: value})]})
        assert coerced.status_code == 422 and any(f.startswith(f"items[0].math.{field}") for f in
                                                  coerced.json()["fields"]), coerced.text
    whole = httpx.post(url, json={"items": [_math("x", "\\boxed{1}", "1", rewards={"correct": 2, "incorrect": 0})]})
    assert whole.status_code == 200 and whole.json()["results"][0]["reward"] == 2.0


def test_metrics_count_items_by_task_and_reason(verifier_server: ServerProcess) -> None:
    labels = {"run": "pytest"}
    ok_before = _metric(verifier_server, "forkrl_verifier_items_total", task="math", reason="ok", **labels)
    wrong_before = _metric(verifier_server, "forkrl_verifier_items_total", task="code", reason="wrong_answer", **labels)
    seconds_before = _metric(verifier_server, "forkrl_verifier_item_duration_seconds_count", task="math", **labels)
    items = [_math(f"k{i}", rf"\boxed{{{i}}}", str(i)) for i in range(5)]
    items.append(_stdio("w", CODE_DOUBLE, [("1", "3")]))
    assert httpx.post(f"{verifier_server.url}/v1/verify", json={"items": items}, timeout=60).status_code == 200
    assert _metric(verifier_server, "forkrl_verifier_items_total", task="math", reason="ok", **labels) == ok_before + 5
    wrong_after = _metric(verifier_server, "forkrl_verifier_items_total", task="code", reason="wrong_answer", **labels)
    assert wrong_after == wrong_before + 1
    seconds_after = _metric(verifier_server, "forkrl_verifier_item_duration_seconds_count", task="math", **labels)
    assert seconds_after == seconds_before + 5
    text = httpx.get(f"{verifier_server.url}/metrics").text
    for name in (
        "forkrl_verifier_requests_total",
        "forkrl_verifier_queue_depth_items",
        "forkrl_verifier_inflight_items",
        "forkrl_verifier_sandbox_kills_total",
        "forkrl_verifier_worker_restarts_total",
        "forkrl_verifier_request_duration_seconds_bucket",
    ):
        assert name in text
    assert _metric(verifier_server, "forkrl_verifier_worker_processes", **labels) == 2


def test_client_round_trip_with_chunking(verifier_server: ServerProcess) -> None:
    items = [_math(f"id-{i}", rf"\boxed{{{i % 7}}}", str(i % 5)) for i in range(23)]

    async def run() -> list:
        async with VerifierClient(verifier_server.url, max_batch_items=4) as client:
            assert await client.health() and await client.ready()
            return await client.verify(items)

    results = asyncio.run(run())
    assert [r.id for r in results] == [f"id-{i}" for i in range(23)]
    assert [r.correct for r in results] == [i % 7 == i % 5 for i in range(23)]


def test_worker_crash_loses_only_its_item(verifier_server: ServerProcess) -> None:
    info = httpx.get(f"{verifier_server.url}/v1/info").json()
    uid_base, pids_before = info["uid_base"], {row["pid"] for row in info["workers"]}
    restarts_before = _metric(verifier_server, "forkrl_verifier_worker_restarts_total", cause="crash")
    slow = _stdio("slow", "```python\nimport time\ntime.sleep(20)\n```", [("", "")], timeout_s=30)
    items = [slow] + [_math(f"m{i}", rf"\boxed{{{i}}}", str(i)) for i in range(20)]
    box: dict[str, httpx.Response] = {}
    request = threading.Thread(
        target=lambda: box.update(r=httpx.post(f"{verifier_server.url}/v1/verify", json={"items": items}, timeout=60))
    )
    request.start()
    deadline, victims = time.monotonic() + 20, []
    while not victims and time.monotonic() < deadline:  # the worker running the sleeping program
        # Its ancestor, not its parent: the program runs under its PID namespace's init.
        victims = [pid for program, _ in sandbox_processes(uid_base) for pid in ancestors(program)
                   if pid in pids_before]
        time.sleep(0.05)
    assert victims, "the slow program never started"
    os.kill(victims[0], signal.SIGKILL)
    request.join(60)
    results = box["r"].json()["results"]
    assert results[0]["id"] == "slow" and results[0]["reason"] == Reason.internal_error.value
    assert "worker crashed" in results[0]["detail"]
    assert [(r["id"], r["reason"]) for r in results[1:]] == [(f"m{i}", "ok") for i in range(20)]
    assert _metric(verifier_server, "forkrl_verifier_worker_restarts_total", cause="crash") == restarts_before + 1
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = httpx.get(f"{verifier_server.url}/v1/info").json()["workers"]
        if all(row["alive"] for row in rows):
            break
        time.sleep(0.2)
    pids_after = {row["pid"] for row in rows}
    assert victims[0] not in pids_after and len(pids_after) == 2 and all(row["alive"] for row in rows)
    assert not sandbox_processes(uid_base), "the orphaned program must be gone"
