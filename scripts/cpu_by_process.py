"""CPU time of every process a command starts, grouped by what the process is: where a suite run's CPU goes.

    sudo python3 scripts/cpu_by_process.py --out cpu.json -- make test     # run and report
    python3 scripts/cpu_by_process.py --report cpu.json                    # report a saved run again

The suite is CPU-bound on 2 cores, so its wall time follows its CPU time; this says which processes
spend it. Every process that exits during the command is counted exactly by the kernel's BSD process
accounting (acct(2); needs root, and counts processes in containers and network namespaces too,
including ones started by daemons rather than by the command). Their command lines come from a
/proc sample every 2 s, which also counts processes still running at the end; a process that lives
less than 2 s keeps only its 16-character `comm` name. Processes running before the command count
only their CPU during it.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import struct
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

ACCT_RECORD = 64  # struct acct_v3
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# (substring of the command line, group); the first match wins, so specific entries come first.
GROUPS = (
    ("ray::LearnerRank", "learner rank (Ray worker)"),
    ("setup_worker.py", "Ray worker (learner rank, job supervisor)"),
    ("default_worker.py", "Ray worker (learner rank, job supervisor)"),
    ("ray/core/src/ray/raylet/raylet", "Ray raylet"),
    ("gcs_server", "Ray GCS"),
    ("dashboard/agent.py", "Ray dashboard agent"),
    ("dashboard/dashboard.py", "Ray dashboard"),
    ("log_monitor.py", "Ray log monitor"),
    ("runtime_env/agent", "Ray runtime-env agent"),
    ("autoscaler/_private/monitor.py", "Ray monitor"),
    ("forkrl.operator", "forkrl operator"),
    ("forkrl.rollout.verifier", "verifier"),
    ("forkrl.rollout", "rollout replica"),
    ("forkrl.trainer.cli", "forkrl train (controller)"),
    ("bin/forkrl ", "forkrl train (controller)"),
    ("multiprocessing.forkserver", "learner ranks of run_world (forkserver)"),
    ("multiprocessing.spawn", "multiprocessing spawn child"),
    ("pytest-xdist", "pytest worker (in-process tests)"),
    ("pytest", "pytest"),
    (" start ", "ray start"),
)
BINARIES = ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler", "kubelet", "kwok", "kubectl",
            "helm", "containerd", "containerd-shim-runc-v2", "runc", "kuberay", "coredns", "chromium", "promtool")


def group_of(command: str, comm: str) -> str:
    executable = command.split(" ", 1)[0].rsplit("/", 1)[-1]
    if executable in BINARIES or comm in BINARIES:
        return executable if executable in BINARIES else comm
    for needle, group in GROUPS:
        if needle in command or needle in comm:  # pytest-xdist workers name themselves only in comm
            return group
    return f"other: {comm or executable}"


def _comp_t(value: int) -> int:
    """The kernel's comp_t: 13-bit mantissa, 3-bit base-8 exponent."""
    return (value & 0x1FFF) << (3 * (value >> 13))


def read_accounting(path: Path) -> list[dict]:
    """acct_v3 records: pid, ppid, CPU seconds (user + system, AHZ = 100), elapsed seconds, comm."""
    data = path.read_bytes()
    records = []
    for offset in range(0, len(data) - ACCT_RECORD + 1, ACCT_RECORD):
        pid, ppid, _btime = struct.unpack_from("<III", data, offset + 16)
        (elapsed,) = struct.unpack_from("<f", data, offset + 28)
        user, system = struct.unpack_from("<HH", data, offset + 32)
        comm = data[offset + 48 : offset + 64].split(b"\0")[0].decode(errors="replace")
        records.append({"pid": pid, "ppid": ppid, "cpu": (_comp_t(user) + _comp_t(system)) / 100.0,
                        "elapsed": elapsed / 100.0, "comm": comm})
    return records


class ProcSampler(threading.Thread):
    """Every `period` s: each process's command line (first seen) and CPU seconds (latest)."""

    def __init__(self, period: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.period = period
        self.commands: dict[int, str] = {}
        self.cpu: dict[int, float] = {}
        self.before: dict[int, float] = {}
        self.done = threading.Event()

    def sample(self) -> None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                if not self.commands.get(pid):
                    self.commands[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                        errors="replace").strip()[:300]
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            self.cpu[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def run(self) -> None:
        self.sample()
        self.before = dict(self.cpu)
        while not self.done.wait(self.period):
            self.sample()

    def stop(self) -> None:
        self.done.set()
        self.join()
        self.sample()


def measure(command: list[str], out: Path) -> int:
    if os.geteuid() != 0:
        sys.exit("cpu_by_process: process accounting (acct(2)) needs root")
    accounting = out.with_suffix(".pacct")
    accounting.write_bytes(b"")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.acct(str(accounting).encode()) != 0:
        sys.exit(f"cpu_by_process: acct({accounting}) failed: {os.strerror(ctypes.get_errno())}")
    sampler = ProcSampler()
    sampler.start()
    started = time.monotonic()
    try:
        code = subprocess.call(command)
    finally:
        wall = time.monotonic() - started
        sampler.stop()
        libc.acct(None)
    records = read_accounting(accounting)
    accounting.unlink()
    exited = set()
    for record in records:
        record["command"] = sampler.commands.get(record["pid"], "")
        exited.add(record["pid"])
    for pid, cpu in sampler.cpu.items():  # still running: only what it spent during the command
        spent = cpu - sampler.before.get(pid, 0.0)
        if pid not in exited and spent > 0:
            records.append({"pid": pid, "ppid": 0, "cpu": spent, "elapsed": 0.0, "comm": "",
                            "command": sampler.commands.get(pid, "")})
    out.write_text(json.dumps({"command": command, "wall_s": wall, "exit_code": code, "processes": records}))
    return code


def report(path: Path, top: int) -> None:
    run = json.loads(path.read_text())
    groups: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for process in run["processes"]:
        group = groups[group_of(process["command"], process["comm"])]
        group[0] += process["cpu"]
        group[1] += 1
    total = sum(cpu for cpu, _ in groups.values())
    print(f"{' '.join(run['command'])}: {run['wall_s']:.0f} s wall, {total:.0f} CPU-s in "
          f"{len(run['processes'])} processes ({total / max(run['wall_s'], 1e-9):.2f} cores busy on average)")
    print(f"{'CPU-s':>8} {'share':>6} {'procs':>6}  group")
    for name, (cpu, count) in sorted(groups.items(), key=lambda item: -item[1][0])[:top]:
        print(f"{cpu:8.1f} {cpu / total:6.1%} {count:6d}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="where to write the per-process JSON (with -- COMMAND)")
    parser.add_argument("--report", type=Path, help="print the report of a saved run")
    parser.add_argument("--top", type=int, default=30, help="groups to print")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.report:
        report(args.report, args.top)
        return
    if not command or args.out is None:
        parser.error("give --out FILE -- COMMAND, or --report FILE")
    code = measure(command, args.out)
    report(args.out, args.top)
    sys.exit(code)


if __name__ == "__main__":
    main()
