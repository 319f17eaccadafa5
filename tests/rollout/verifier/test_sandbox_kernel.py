"""What the kernel enforces around a sandboxed program, with the audit hook off (so only the OS stands in the
way), each checked against the same program with the feature turned off, so a pass means the feature did it:

- PID namespace: the program is PID 2 and sees only its namespace in /proc; the worker's pid does not exist
  for it; processes it leaves behind die with it.
- seccomp: calls that succeed (or fail otherwise) for any unprivileged process answer EPERM.
- isolation: strict refuses to start the service where a feature is missing (here: under a seccomp filter
  that denies unshare, as a container runtime's default profile does); auto starts, logs the gap and
  reports it in /v1/info and forkrl_verifier_sandbox_isolated_processes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx
import pytest

from forkrl.rollout.verifier.cgroup import run_memory_cap
from forkrl.rollout.verifier.config import SandboxConfig
from forkrl.rollout.verifier.isolation import derive_uid_base
from forkrl.rollout.verifier.outcome import SandboxRun
from forkrl.rollout.verifier.sandbox import Sandbox, SandboxLimits
from forkrl.rollout.verifier.seccomp import supported_arch
from tests.rollout.verifier.conftest import run_server, sandbox_processes

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or supported_arch() is None,
                                reason="namespaces and a dropped uid need root; the filter needs x86_64 or aarch64")
LIMITS = SandboxLimits(wall_s=10, cpu_s=10, memory_bytes=1 << 30, file_bytes=1 << 20, processes=16,
                       open_files=64, output_bytes=1 << 16, disk_bytes=1 << 22)
UID_BASE = derive_uid_base(os.getpid()) + 512


def _sandbox_run(program: str, slot: int, limits: SandboxLimits, **sandbox: object) -> SandboxRun:
    box = Sandbox(SandboxConfig(audit_hook=False, **sandbox), UID_BASE + slot)
    try:
        return box.run(program, mode="stdio", stdin=b"", limits=limits)
    finally:
        box.close()


def _run(program: str, slot: int, **sandbox: object) -> str:
    run = _sandbox_run(program, slot, LIMITS, **sandbox)
    assert run.outcome == "exited", (run.outcome, run.stderr[-2000:])
    return run.stdout.decode().strip()


def test_the_program_sees_only_its_own_pid_namespace() -> None:
    program = f"""import json, os
try:
    os.kill({os.getpid()}, 0)
    worker = 'seen'
except ProcessLookupError:
    worker = 'hidden'
except PermissionError:
    worker = 'seen'
pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
print(json.dumps({{'pid': os.getpid(), 'pids': pids, 'worker': worker}}))
"""
    inside = json.loads(_run(program, 0))
    # init and the program, nothing of the host; the worker (this test process) does not exist in there
    assert inside == {"pid": 2, "pids": [1, 2], "worker": "hidden"}, inside
    outside = json.loads(_run(program, 1, pid_namespace="off"))
    assert outside["pid"] != 2 and outside["worker"] == "seen" and len(outside["pids"]) > 2, outside


def test_processes_left_behind_die_with_the_program() -> None:
    # A daemon that leaves the program's process group (setsid) and would outlive it without the namespace.
    program = """import os, time
if os.fork() == 0:
    os.setsid()
    time.sleep(30)
    os._exit(0)
print('parent done')
"""
    assert _run(program, 2) == "parent done"
    assert not sandbox_processes(UID_BASE + 2, 1), "the daemon died with the namespace"


SYSCALLS = """import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def errno_of(result):
    return 0 if result != -1 else ctypes.get_errno()
results = {
    'personality': errno_of(libc.personality(ctypes.c_ulong(0xffffffff))),
    'ptrace': errno_of(libc.ptrace(0, 0, None, None)),
    'setns': errno_of(libc.setns(0, 0)),
    'unshare': errno_of(libc.unshare(0)),
}
print(' '.join(f'{name}={value}' for name, value in results.items()))
"""


def test_seccomp_refuses_calls_an_unprivileged_process_could_otherwise_make() -> None:
    filtered = dict(pair.split("=") for pair in _run(SYSCALLS, 3).split())
    assert filtered == {"personality": "1", "ptrace": "1", "setns": "1", "unshare": "1"}  # EPERM, every one
    unfiltered = dict(pair.split("=") for pair in _run(SYSCALLS, 4, seccomp="off").split())
    # Without the filter: a query, PTRACE_TRACEME and a no-op unshare succeed; setns on a pipe is EINVAL.
    yama = Path("/proc/sys/kernel/yama/ptrace_scope")
    traceme = "1" if yama.exists() and yama.read_text().strip() == "3" else "0"  # Yama 3 forbids any ptrace
    assert unfiltered == {"personality": "0", "ptrace": traceme, "setns": "22", "unshare": "0"}


UNDER_DEFAULT_PROFILE = """import os, sys
from forkrl.rollout.verifier.isolation import PR_SET_NO_NEW_PRIVS, prctl
from forkrl.rollout.verifier.seccomp import install_filter, supported_arch
prctl(PR_SET_NO_NEW_PRIVS, 1)
install_filter(supported_arch())  # like a runtime's default profile: no unshare, no mount
os.execv(sys.executable, [sys.executable, '-m', 'forkrl.rollout.verifier', *sys.argv[1:]])
"""


def test_strict_refuses_to_start_without_namespaces_and_auto_says_what_it_lacks(tmp_path: Path) -> None:
    under_filter = [sys.executable, "-c", UNDER_DEFAULT_PROFILE]
    refused = "refusing to start: sandbox.network_namespace is required by isolation: strict"
    strict = run_server(tmp_path, {"workers": 1, "sandbox": {"isolation": "strict"}}, launcher=under_filter)
    with pytest.raises(RuntimeError, match=refused), strict:  # it exited: run_server raises with its log
        pass
    with run_server(tmp_path, {"workers": 1, "sandbox": {"isolation": "auto"}}, launcher=under_filter) as auto:
        isolation = httpx.get(f"{auto.url}/v1/info", timeout=10).json()["workers"][0]["isolation"]
        assert not isolation["network_namespace"] and not isolation["pid_namespace"], isolation
        assert isolation["seccomp"] == supported_arch() and isolation["uid"] is not None, isolation
        metrics = httpx.get(f"{auto.url}/metrics", timeout=10).text
        counts = {line.split('feature="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                  for line in metrics.splitlines() if line.startswith("forkrl_verifier_sandbox_isolated_processes{")}
        assert counts == {"network_namespace": 0.0, "mount_namespace": 0.0, "pid_namespace": 0.0,
                          "seccomp": 1.0, "drop_privileges": 1.0, "cgroup": float(isolation["cgroup"] is not None)}
        assert "WARNING: the sandbox of uid" in auto.log() and "WITHOUT network_namespace" in auto.log()


CHILDREN_EACH_UNDER_THE_LIMIT = """import os, sys, time
children = []
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        block = bytearray(160 * 1024 * 1024)
        for offset in range(0, len(block), 4096):  # touch every page: only touched memory is charged
            block[offset] = 1
        time.sleep(1)
        os._exit(0)
    children.append(pid)
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
print(codes)
sys.exit(1 if any(codes) else 0)
"""
SMALL = SandboxLimits(wall_s=20, cpu_s=20, memory_bytes=256 << 20, file_bytes=1 << 20, processes=16,
                      open_files=64, output_bytes=1 << 16, disk_bytes=4 << 20)


def test_the_cgroup_caps_the_memory_of_all_processes_together() -> None:
    """Each child stays under the per-process address-space limit; together they are over the cgroup's cap."""
    assert SMALL.memory_bytes > 160 << 20 and run_memory_cap(SMALL.memory_bytes, SMALL.disk_bytes) < 3 * (160 << 20)
    capped = _sandbox_run(CHILDREN_EACH_UNDER_THE_LIMIT, 5, SMALL)
    assert capped.oom_killed and capped.outcome == "memory_limit", (capped.outcome, capped.stdout, capped.stderr[-500:])
    # The kernel's OOM killer ended a process inside the cgroup (a child, or the program itself).
    assert capped.term_signal == 9 or "-9" in capped.stdout.decode(), capped
    free = _sandbox_run(CHILDREN_EACH_UNDER_THE_LIMIT, 6, SMALL, cgroup="off")
    assert free.outcome == "exited" and free.stdout.decode().strip() == "[0, 0, 0]", free.stderr[-500:]


FORKS = """import os, time
started = 0
for _ in range(40):
    try:
        if os.fork() == 0:
            time.sleep(2)
            os._exit(0)
        started += 1
    except OSError:
        break
print(started)
"""


def test_the_cgroup_caps_processes_even_for_root() -> None:
    """RLIMIT_NPROC does not bind root (no privilege drop here); pids.max does."""
    capped = _run(FORKS, 7, drop_privileges="off")
    assert int(capped) <= SMALL.processes, capped
    assert _run(FORKS, 8, drop_privileges="off", cgroup="off") == "40"
