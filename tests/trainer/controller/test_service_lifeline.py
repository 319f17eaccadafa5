"""The services a local run starts die with it, however it dies (issue 13), and leave no temp files (issue 15).

Real processes throughout: a stand-in controller starts a real verifier (with its pool workers) and a real
rollout replica through `LocalProcess`, exactly as `forkrl train` does, and is then SIGKILLed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from forkrl.rollout.network import LOCAL_BIND_HOST
from forkrl.trainer.controller.services import LocalProcess, start_verifier
from forkrl.trainer.learner.launch import free_port
from tests.orphans import describe, gone, kill_all, wait_gone

REPO = Path(__file__).resolve().parents[3]
SMOKE = Path(__file__).parent / "smoke.yaml"

CONTROLLER = """
import json, sys, time
from pathlib import Path
from forkrl.rollout.tiny_model import save_tiny_model
from forkrl.trainer.controller.services import start_rollout_replica, start_verifier
from forkrl.trainer.spec import load_spec
spec, root = load_spec(sys.argv[1]), Path(sys.argv[2])
model = save_tiny_model(root / "model", spec.model.tiny)
verifier = start_verifier({"run": "lifeline"}, root / "logs", workers=2)
replica = start_rollout_replica(spec, str(model), root / "logs", 0)
print(json.dumps({"verifier": verifier.process.pid, "verifier_url": verifier.url,
                  "replica": replica.process.pid}), flush=True)
time.sleep(600)
"""

# A stand-in service: installs the lifeline watcher like the real entry points and starts a grandchild in
# its process group (as the verifier starts pool workers), then answers /healthz with the grandchild's pid.
DUMMY = """
import http.server, json, subprocess, sys
from forkrl.rollout.lifeline import watch_from_env
watching = watch_from_env()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"watching": watching, "child": child.pid}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
"""


def wait_ready(url: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready within {timeout_s:g}s")


def pool_processes(tree: list[psutil.Process]) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """(spawned pool workers, multiprocessing resource trackers) in `tree`."""
    workers, trackers = [], []
    for process in tree:
        try:
            line = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if "spawn_main" in line:
            workers.append(process)
        elif "resource_tracker" in line:
            trackers.append(process)
    return workers, trackers


def test_sigkilled_controller_takes_verifier_workers_and_replica_along(tmp_path: Path) -> None:
    controller = subprocess.Popen([sys.executable, "-c", CONTROLLER, str(SMOKE), str(tmp_path)], cwd=REPO,
                                  stdout=subprocess.PIPE, text=True, start_new_session=True)
    tree: list[psutil.Process] = []
    try:
        assert controller.stdout is not None
        line = controller.stdout.readline()
        assert line, f"stand-in controller exited with {controller.wait()}"
        started = json.loads(line)
        wait_ready(started["verifier_url"])  # its pool workers are up
        tree = psutil.Process(controller.pid).children(recursive=True)
        pids = {p.pid for p in tree}
        workers, trackers = pool_processes(tree)
        assert {started["verifier"], started["replica"]} <= pids and len(workers) == 2 and trackers, describe(tree)

        os.kill(controller.pid, signal.SIGKILL)
        controller.wait(10)
        survivors = wait_gone(tree, timeout_s=15)
        assert not survivors, f"outlived the controller: {describe(survivors)}"
    finally:
        if controller.poll() is None:
            controller.kill()
            controller.wait(10)
        kill_all(tree)


def test_sigkilled_verifier_takes_its_workers_and_tracker_along_and_restarts(tmp_path: Path) -> None:
    verifier = start_verifier({"run": "lifeline"}, tmp_path / "logs", workers=2)
    tree: list[psutil.Process] = []
    try:
        wait_ready(verifier.url)
        assert verifier.process is not None
        tree = psutil.Process(verifier.process.pid).children(recursive=True)
        workers, trackers = pool_processes(tree)
        assert len(workers) == 2 and trackers, describe(tree)

        os.kill(verifier.process.pid, signal.SIGKILL)  # the server alone, not its group
        verifier.process.wait(10)
        survivors = wait_gone(tree, timeout_s=15)
        assert not survivors, f"outlived the verifier: {describe(survivors)}"

        verifier.start()  # a crashed pod coming back: its config is still there
        wait_ready(verifier.url)
    finally:
        verifier.kill()
        kill_all(tree)


def test_verifier_config_is_kept_with_its_logs_not_in_a_temp_dir(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setattr(LocalProcess, "start", lambda self, timeout_s=180.0: self)
    config = {"run": "lifeline", "code": {"test_timeout_s": 2.0}}
    verifier = start_verifier(config, tmp_path / "logs", workers=1)
    config_path = Path(verifier.argv[verifier.argv.index("--config") + 1])
    assert config_path == tmp_path / "logs" / "verifier.json"
    assert json.loads(config_path.read_text()) == config
    assert list(temp.iterdir()) == []


def dummy_service(tmp_path: Path, name: str) -> LocalProcess:
    script = tmp_path / "dummy_service.py"
    script.write_text(DUMMY)
    port = free_port()
    argv = [sys.executable, str(script), LOCAL_BIND_HOST, str(port)]
    return LocalProcess(name, argv, port, tmp_path / f"{name}.log")


def service_tree(service: LocalProcess, seen: list[psutil.Process]) -> list[psutil.Process]:
    """The service's leader and the grandchild it reports (also added to `seen`, for the cleanup)."""
    body = httpx.get(f"{service.url}/healthz", timeout=5.0).json()
    assert service.process is not None
    tree = [psutil.Process(service.process.pid), psutil.Process(body["child"])]
    seen += tree
    assert body["watching"] is True, "the service got no lifeline"
    return tree


def test_restart_from_a_helper_thread_outlives_the_thread(tmp_path: Path) -> None:
    service = dummy_service(tmp_path, "dummy")
    seen: list[psutil.Process] = []
    try:
        first = service_tree(service.start(timeout_s=60), seen)
        helper = threading.Thread(target=service.restart, kwargs={"timeout_s": 60})
        helper.start()
        helper.join(90)
        assert not helper.is_alive()
        assert not wait_gone(first, timeout_s=10), "restart left the first process group behind"
        second = service_tree(service, seen)
        time.sleep(2.0)  # the helper thread is long gone: a thread-bound death signal would have fired
        assert service.alive() and not any(gone(p) for p in second)
        service.stop()
        assert not wait_gone(second, timeout_s=10), "stop left the group behind"
    finally:
        service.kill()
        kill_all(seen)


def test_cut_lifeline_ends_only_its_own_service_and_group(tmp_path: Path) -> None:
    first, second = dummy_service(tmp_path, "first"), dummy_service(tmp_path, "second")
    seen: list[psutil.Process] = []
    try:
        first_tree = service_tree(first.start(timeout_s=60), seen)
        # Started while the first one's pipe is open in this process: it must not hold that pipe too.
        second_tree = service_tree(second.start(timeout_s=60), seen)
        assert first._lifeline is not None
        first._lifeline.close()  # what this process's death does, for the first service only
        survivors = wait_gone(first_tree, timeout_s=10)
        assert not survivors, f"outlived its lifeline: {describe(survivors)}"
        time.sleep(1.0)
        assert second.alive() and not any(gone(p) for p in second_tree)
    finally:
        first.kill()
        second.kill()
        kill_all(seen)
