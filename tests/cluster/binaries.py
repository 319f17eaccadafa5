"""Where the cluster binaries live (control plane; real nodes), and building them with build.sh on first use."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

BUILD_SCRIPT = Path(__file__).resolve().parent / "build.sh"
MODULES_DIR = BUILD_SCRIPT.parent / "modules"
BINARY_NAMES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
    "kuberay",
    "helm",
)


NODE_BINARY_NAMES = ("kubelet", "kube-proxy", "coredns")


class BuildError(RuntimeError):
    """build.sh failed; the message names the binary and carries the compiler's output."""


@dataclass(frozen=True)
class ClusterBinaries:
    """A built version set: `<set>/bin/<name>` executables and `<set>/crds`, `<set>/kwok` data.

    crd_dir/kuberay holds the KubeRay CRDs copied from the ray-operator module at build time;
    kwok_stage_dir holds the kwok stage configs (node init, lease heartbeat, fast pod stages).
    """

    bin_dir: Path

    @property
    def set_dir(self) -> Path:
        return self.bin_dir.parent

    @property
    def crd_dir(self) -> Path:
        return self.set_dir / "crds"

    @property
    def kuberay_crd_dir(self) -> Path:
        return self.crd_dir / "kuberay"

    @property
    def kwok_stage_dir(self) -> Path:
        return self.set_dir / "kwok" / "stages"

    def path(self, name: str) -> Path:
        if name not in BINARY_NAMES:
            raise ValueError(f"unknown control-plane binary {name!r}; known: {', '.join(BINARY_NAMES)}")
        return self.bin_dir / name

    def missing(self) -> list[str]:
        return [name for name in BINARY_NAMES if not os.access(self.bin_dir / name, os.X_OK)]


def pinned_version(module_dir: str, module_path: str) -> str:
    """The version `modules/<module_dir>/go.mod` requires of `module_path` (parsed here, not by build.sh)."""
    text = (MODULES_DIR / module_dir / "go.mod").read_text()
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module_path)}\s+(v\S+)", text, re.MULTILINE)
    if match is None:
        raise ValueError(f"{module_path} is not required in {MODULES_DIR / module_dir / 'go.mod'}")
    return match.group(1)


def go_available() -> bool:
    return shutil.which("go") is not None


def _run_build_script(args: list[str], stream_progress: bool) -> Path:
    """Run build.sh with `args`; its last stdout line is the bin directory of the version set."""
    command = " ".join(["tests/cluster/build.sh", *args])
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), *args],
        stdout=subprocess.PIPE,
        stderr=None if stream_progress else subprocess.PIPE,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        detail = result.stderr if result.stderr is not None else "(progress and errors were printed above)"
        raise BuildError(f"{command} failed with exit code {result.returncode}:\n{detail}")
    lines = result.stdout.strip().splitlines()
    if not lines:
        raise BuildError(f"{command} printed no bin directory")
    return Path(lines[-1])


def build_binaries(stream_progress: bool = True) -> ClusterBinaries:
    """Run build.sh (a no-op when the version set is built) and return the built set.

    Progress lines go to this process's stderr when `stream_progress`; a cold build takes tens
    of minutes on 2 cores, so callers should build outside any per-test timeout.
    """
    binaries = ClusterBinaries(_run_build_script([], stream_progress))
    if missing := binaries.missing():
        raise BuildError(f"build.sh finished but these binaries are missing from {binaries.bin_dir}: {missing}")
    return binaries


@dataclass(frozen=True)
class NodeBinaries:
    """The node version set (`build.sh --nodes`): kubelet, kube-proxy and the cluster DNS."""

    bin_dir: Path

    def path(self, name: str) -> Path:
        if name not in NODE_BINARY_NAMES:
            raise ValueError(f"unknown node binary {name!r}; known: {', '.join(NODE_BINARY_NAMES)}")
        return self.bin_dir / name

    def missing(self) -> list[str]:
        return [name for name in NODE_BINARY_NAMES if not os.access(self.bin_dir / name, os.X_OK)]


def build_node_binaries(stream_progress: bool = True) -> NodeBinaries:
    """Run `build.sh --nodes` (a no-op when built); the kubelet shares most packages with the control
    plane, so after the control plane's build this one is mostly linking."""
    binaries = NodeBinaries(_run_build_script(["--nodes"], stream_progress))
    if missing := binaries.missing():
        raise BuildError(f"build.sh --nodes finished but these are missing from {binaries.bin_dir}: {missing}")
    return binaries
