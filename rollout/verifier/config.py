"""Service, per-task reward and sandbox configuration (pydantic, `extra="forbid"`)."""

from __future__ import annotations

import os
import socket
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from forkrl.rollout.verifier.schemas import RewardValues

Toggle = Literal["auto", "require", "off"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MathRewardConfig(_Strict):
    rewards_boxed: RewardValues = Field(
        default_factory=lambda: RewardValues(correct=1.0, incorrect=0.0),
        description="Reward values for `boxed` extraction (80/20 and Archer use {1, 0}).",
    )
    rewards_dapo: RewardValues = Field(
        default_factory=lambda: RewardValues(correct=1.0, incorrect=-1.0),
        description="Reward values for `dapo` extraction (DAPO Eq. 7: +1 / -1).",
    )
    fast_path: bool = Field(True, description="Decide by exact/numeric comparison before math-verify.")
    symbolic: bool = Field(
        True, description="Use math-verify when the fast path is undecided; off = verl math_dapo exact match."
    )
    strip_thinking: bool = Field(True, description="Score only the text after the last `</think>`.")
    dapo_tail_chars: int = Field(300, ge=0, le=1_000_000, description="DAPO looks at this many final chars (0 = all).")
    parse_timeout_s: int = Field(3, ge=1, le=60, description="math-verify parse timeout (signal, whole seconds).")
    verify_timeout_s: int = Field(3, ge=1, le=60, description="math-verify comparison timeout per pair.")
    timeout_s: float = Field(15.0, gt=0, le=600, description="Default time budget of one math item.")


class CodeRewardConfig(_Strict):
    rewards: RewardValues = Field(default_factory=RewardValues, description="Reward values for code items.")
    scoring: Literal["fraction", "all_or_nothing"] = Field(
        "all_or_nothing", description="Reward = fraction of tests passed, or all-or-nothing."
    )
    timeout_s: float = Field(60.0, gt=0, le=600, description="Default time budget of one code item (all tests).")
    test_timeout_s: float = Field(4.0, gt=0, le=120, description="Wall and CPU limit of one test run.")
    memory_mb: int = Field(1024, ge=64, le=65536, description="Address-space limit (RLIMIT_AS) of a program.")
    output_kib: int = Field(4096, ge=1, le=1_048_576, description="Bytes a program may print (all streams).")
    file_size_kib: int = Field(8192, ge=1, le=1_048_576, description="Largest file a program may write.")
    disk_kib: int = Field(32768, ge=64, le=4_194_304, description="Size of the program's private tmpfs.")
    max_processes: int = Field(16, ge=1, le=4096, description="RLIMIT_NPROC of the sandbox user.")
    max_open_files: int = Field(64, ge=8, le=65536, description="RLIMIT_NOFILE of a program.")
    float_tolerance: float = Field(
        0.0, ge=0, le=1, description="Absolute tolerance for numeric stdout tokens (0 = numerically equal)."
    )
    strip_thinking: bool = Field(True, description="Look for the program only after the last `</think>`.")


class SandboxConfig(_Strict):
    network_namespace: Toggle = Field("auto", description="Run programs in an empty network namespace.")
    mount_namespace: Toggle = Field(
        "auto", description="Private tmpfs home, world-writable dirs and hide_paths masked read-only."
    )
    drop_privileges: Toggle = Field("auto", description="Run programs as a dedicated unprivileged uid.")
    pid_namespace: Toggle = Field(
        "auto", description="Run programs in their own PID namespace (with the mount namespace: a private /proc)."
    )
    seccomp: Toggle = Field(
        "auto",
        description="A seccomp filter: EPERM for ptrace, mount, namespaces, bpf, keyrings, perf, modules, io_uring "
        "and similar calls (rollout/verifier/seccomp.py).",
    )
    cgroup: Toggle = Field(
        "auto",
        description="A cgroup per worker slot capping the memory (address-space limit + disk) and processes of "
        "everything a program starts together; needs a writable cgroup (rollout/verifier/cgroup.py).",
    )
    isolation: Literal["auto", "strict"] = Field(
        "auto",
        description="strict: every feature that is not `off` is required, and the service refuses to start without "
        "it. auto: a missing one is logged as a warning and reported in /v1/info and "
        "forkrl_verifier_sandbox_isolated_processes.",
    )
    uid_base: int | None = Field(
        None, ge=1000, le=2**31 - 4096, description="First sandbox uid (one per worker slot); None = derived."
    )
    python: str | None = Field(None, description="Interpreter for programs; None = first one the sandbox can run.")
    audit_hook: bool = Field(
        True, description="Classify forbidden actions (network, processes, signals, escapes) as violations."
    )
    hide_paths: list[str] = Field(
        default_factory=lambda: ["/root", "/home", "/run/secrets", "/var/run/secrets"],
        description="Directories masked by an empty read-only tmpfs (secrets, service-account tokens).",
    )
    writable_masks: list[str] = Field(
        default_factory=lambda: ["/var/tmp", "/dev/shm", "/run/lock"],
        description="World-writable directories masked read-only (/tmp is always replaced).",
    )
    workdir_root: str | None = Field(
        None, description="Parent of per-run directories when no mount namespace is available (None = TMPDIR)."
    )


def default_worker_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class VerifierConfig(_Strict):
    run: str = Field("local", min_length=1, max_length=128, description="`run` label on every metric.")
    replica: str = Field(
        default_factory=socket.gethostname, min_length=1, max_length=256, description="`replica` metric label."
    )
    workers: int = Field(
        default_factory=default_worker_count, ge=1, le=512, description="Worker processes (default: CPU count)."
    )
    max_queue_items: int = Field(8192, ge=1, le=1_000_000, description="Items queued or running before 429.")
    max_body_mb: int = Field(64, ge=1, le=4096, description="Largest accepted request body.")
    worker_memory_mb: int | None = Field(
        4096, ge=256, le=1_048_576, description="Address-space limit of each worker process (None = none)."
    )
    worker_start_timeout_s: float = Field(120.0, gt=0, le=3600, description="Time allowed for a worker to start.")
    shutdown_grace_s: float = Field(60.0, ge=0, le=3600, description="Time to drain in-flight work on shutdown.")
    math: MathRewardConfig = Field(default_factory=MathRewardConfig, description="Math task settings.")
    code: CodeRewardConfig = Field(default_factory=CodeRewardConfig, description="Code task settings.")
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig, description="Sandbox isolation settings.")

    @model_validator(mode="after")
    def _program_fits_in_worker(self) -> VerifierConfig:
        # A program's limits are set by its worker, which cannot raise a hard limit it lives under.
        if self.worker_memory_mb is not None and self.code.memory_mb > self.worker_memory_mb:
            raise ValueError(
                f"code.memory_mb ({self.code.memory_mb}) must not exceed worker_memory_mb ({self.worker_memory_mb})"
            )
        return self
