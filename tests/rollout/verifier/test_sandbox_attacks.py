"""Hostile programs: each is contained, scored 0 with the right reason, and the service keeps answering.

Twice: through the real service (the audit hook classifies the attack as a violation), and through a
worker pool with the audit hook off, which shows the OS-level containment holds on its own.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from forkrl.rollout.verifier.cgroup import remove_slot_cgroups
from forkrl.rollout.verifier.config import VerifierConfig
from forkrl.rollout.verifier.isolation import cgroup_name, derive_uid_base
from forkrl.rollout.verifier.pool import WorkerPool
from forkrl.rollout.verifier.schemas import CodeItem, Reason, VerifyResult
from forkrl.rollout.verifier.scoring import init_worker, score_in_worker
from tests.rollout.verifier.conftest import SECRET_ENV, SECRET_VALUE, ServerProcess, sandbox_processes

INFINITE_LOOP = "while True:\n    pass\n"
FORK_BOMB = "import os\nwhile True:\n    os.fork()\n"
STUBBORN_FORK_BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
MEMORY_BOMB = "blocks = []\nwhile True:\n    blocks.append(bytearray(64 * 1024 * 1024))\n"
HUGE_ALLOCATION = "data = bytearray(16 * 1024 ** 3)\n"
HUGE_OUTPUT = "while True:\n    print('x' * 10000)\n"
KILL_PARENT = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('KILLED')\n"
ENV_LEAK = f"import os\nprint('LEAK' if any({SECRET_VALUE!r} in v for v in os.environ.values()) else 'CLEAN')\n"
PROC_LEAK = f"""import os
found = 'CLEAN'
for pid in (os.getppid(), 1):
    try:
        if {SECRET_VALUE!r}.encode() in open(f'/proc/{{pid}}/environ', 'rb').read():
            found = 'LEAK'
    except OSError:
        pass
print(found)
"""


def _network(port: int) -> str:
    return f"""import socket
outcome = []
for host in ('127.0.0.1', '10.255.255.1'):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1)
    try:
        s.connect((host, {port}))
        outcome.append('CONNECTED')
    except OSError as error:
        outcome.append(f'BLOCKED-{{error.errno}}')
print(' '.join(outcome))
"""


def _escape(targets: list[str]) -> str:
    return f"""wrote = 0
for path in {targets!r}:
    try:
        with open(path, 'w') as handle:
            handle.write('escaped')
        wrote += 1
    except OSError:
        pass
print(wrote)
"""


def _item(program: str, expected: str = "", *, timeout_s: float = 10.0) -> dict:
    return {
        "task": "code",
        "id": uuid.uuid4().hex[:8],
        "response": f"```python\n{program}```",
        "tests": {"style": "stdio", "cases": [{"input": "", "output": expected}]},
        "timeout_s": timeout_s,
    }


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def _assert_no_connection(listener: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        listener.accept()


def _escape_targets(tmp_path: Path) -> list[str]:
    tag = uuid.uuid4().hex
    return [str(tmp_path / f"escape-{tag}"), f"/var/tmp/escape-{tag}", f"/dev/shm/escape-{tag}", f"../escape-{tag}"]


# --- through the service (audit hook on) ---------------------------------------------------------
def _verify(server: ServerProcess, item: dict) -> dict:
    response = httpx.post(f"{server.url}/v1/verify", json={"items": [item]}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


def _kills(server: ServerProcess) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    lines = [line for line in text.splitlines() if line.startswith("forkrl_verifier_sandbox_kills_total{")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


@pytest.mark.parametrize(
    ("program", "reason"),
    [
        (INFINITE_LOOP, Reason.timeout),
        (FORK_BOMB, Reason.sandbox_violation),
        (MEMORY_BOMB, Reason.memory_limit),
        (HUGE_ALLOCATION, Reason.memory_limit),
        (HUGE_OUTPUT, Reason.output_limit),
        (KILL_PARENT, Reason.sandbox_violation),
        (PROC_LEAK, Reason.sandbox_violation),
        (ENV_LEAK, Reason.wrong_answer),  # ran fine but saw no secret: printed CLEAN, not the expected LEAK
    ],
    ids=["loop", "fork-bomb", "memory-bomb", "huge-allocation", "huge-output", "kill-parent", "proc-environ", "env"],
)
def test_attack_through_service(verifier_server: ServerProcess, program: str, reason: Reason) -> None:
    info = httpx.get(f"{verifier_server.url}/v1/info").json()
    pids = {row["pid"] for row in info["workers"]}
    kills = _kills(verifier_server)
    # Only the loop should meet the wall clock; the others have room to reach their own limit first.
    timeout_s = 3.0 if reason == Reason.timeout else 20.0
    result = _verify(verifier_server, _item(program, "LEAK" if "LEAK" in program else "KILLED", timeout_s=timeout_s))
    assert (result["reason"], result["reward"], result["correct"]) == (reason.value, 0.0, False), result
    # Killed by the parent at the wall-clock or output limit (the memory bomb dies on its own).
    assert _kills(verifier_server) == kills + (reason in (Reason.timeout, Reason.output_limit))
    if reason == Reason.wrong_answer:
        assert "'CLEAN'" in result["detail"]
    assert {row["pid"] for row in httpx.get(f"{verifier_server.url}/v1/info").json()["workers"]} == pids
    assert not sandbox_processes(info["uid_base"])
    sanity = _verify(verifier_server, _item("print(6 * 7)\n", "42"))
    assert sanity["reason"] == "ok" and httpx.get(f"{verifier_server.url}/healthz").status_code == 200


def test_network_through_service(verifier_server: ServerProcess, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    result = _verify(verifier_server, _item(_network(port), "CONNECTED CONNECTED"))
    assert (result["reason"], result["reward"]) == ("sandbox_violation", 0.0)
    _assert_no_connection(listener)


def test_escape_through_service(verifier_server: ServerProcess, tmp_path: Path) -> None:
    targets = _escape_targets(tmp_path)
    result = _verify(verifier_server, _item(_escape(targets), str(len(targets))))
    assert (result["reason"], result["reward"]) == ("sandbox_violation", 0.0)
    assert not any(os.path.exists(path) for path in targets[:3])


# --- OS containment alone (audit hook off) -------------------------------------------------------
@pytest.fixture(scope="module")
def unhooked() -> Iterator[tuple[WorkerPool, int]]:
    config = VerifierConfig(workers=1, sandbox={"audit_hook": False}, code={"test_timeout_s": 3.0, "output_kib": 256})
    uid_base = derive_uid_base(os.getpid()) + 256
    os.environ[SECRET_ENV] = SECRET_VALUE  # inherited by the worker, the sandbox's parent
    try:
        pool = WorkerPool(1, init_worker, (config, uid_base), start_timeout_s=60)
        pool.start()
        assert pool.wait_ready(90)
    finally:
        del os.environ[SECRET_ENV]
    yield pool, uid_base
    pool.close(5)
    remove_slot_cgroups([cgroup_name(uid_base)])


def _score(pool: WorkerPool, item: dict) -> dict:
    return score_in_pool(pool, item).model_dump(mode="json")


def score_in_pool(pool: WorkerPool, item: dict) -> VerifyResult:
    return pool.submit(score_in_worker, CodeItem.model_validate(item), 30).result(60).result


@pytest.mark.parametrize(
    ("program", "expected", "reasons"),
    [
        (STUBBORN_FORK_BOMB, "", {"timeout", "runtime_error"}),
        (KILL_PARENT, "KILLED", {"runtime_error"}),
        (PROC_LEAK, "LEAK", {"wrong_answer"}),
        (ENV_LEAK, "LEAK", {"wrong_answer"}),
    ],
    ids=["fork-bomb", "kill-parent", "proc-environ", "env"],
)
def test_attack_contained_without_hook(
    unhooked: tuple[WorkerPool, int], program: str, expected: str, reasons: set[str]
) -> None:
    pool, uid_base = unhooked
    pid_before = pool.workers()[0]["pid"]
    result = _score(pool, _item(program, expected, timeout_s=3.0))
    assert result["reason"] in reasons and result["reward"] == 0.0, result
    if "wrong_answer" in reasons:
        assert "'CLEAN'" in result["detail"]
    if program == KILL_PARENT:
        assert "PermissionError" in result["detail"]
    assert pool.workers()[0]["pid"] == pid_before  # the parent survived
    assert not sandbox_processes(uid_base), "every process of the sandbox uid is gone"
    assert _score(pool, _item("print(6 * 7)\n", "42"))["reason"] == "ok"


def test_network_contained_without_hook(unhooked: tuple[WorkerPool, int], listener: socket.socket) -> None:
    pool, _ = unhooked
    result = _score(pool, _item(_network(listener.getsockname()[1]), "CONNECTED CONNECTED"))
    assert result["reason"] == "wrong_answer"
    assert "'BLOCKED-101 BLOCKED-101'" in result["detail"]  # ENETUNREACH: an empty network namespace
    _assert_no_connection(listener)


def test_escape_contained_without_hook(unhooked: tuple[WorkerPool, int], tmp_path: Path) -> None:
    pool, _ = unhooked
    targets = _escape_targets(tmp_path)
    result = _score(pool, _item(_escape(targets), str(len(targets))))
    assert result["reason"] == "wrong_answer" and "got '0'" in result["detail"]
    assert not any(os.path.exists(path) for path in targets[:3])
