"""build.sh: version-set naming, the warm no-op path, input checks, and what it built (static,
version-stamped binaries; third-party YAML copied from the pinned modules)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.cluster.binaries import BINARY_NAMES, BUILD_SCRIPT, MODULES_DIR, ClusterBinaries, pinned_version

PT_INTERP = 3  # ELF program header type naming a dynamic loader; absent in static binaries.


def copy_build_inputs(root: Path) -> Path:
    """build.sh plus every go.mod/go.sum, so a test can edit pins without touching the checkout."""
    root.mkdir(parents=True)
    shutil.copy(BUILD_SCRIPT, root / "build.sh")
    for module in MODULES_DIR.iterdir():
        (root / "modules" / module.name).mkdir(parents=True)
        for name in ("go.mod", "go.sum"):
            shutil.copy(module / name, root / "modules" / module.name / name)
    return root / "build.sh"


def run_build(script: Path, *args: str, cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if cache is not None:
        env["FORKRL_K8S_CACHE"] = str(cache)
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env, check=False)


def expected_set_prefix() -> str:
    return (
        f"k8s-{pinned_version('kube-apiserver', 'k8s.io/kubernetes')}"
        f"_etcd-{pinned_version('etcd', 'go.etcd.io/etcd/server/v3')}"
        f"_kuberay-{pinned_version('kuberay', 'github.com/ray-project/kuberay/ray-operator')}"
        f"_kwok-{pinned_version('kwok', 'sigs.k8s.io/kwok')}"
        f"_helm-{pinned_version('helm', 'helm.sh/helm/v3')}_"
    )


def test_version_set_is_named_by_the_pins_and_a_bump_moves_it(tmp_path: Path) -> None:
    script = copy_build_inputs(tmp_path / "inputs")
    cache = tmp_path / "cache"
    first = Path(run_build(script, "--print-bin-dir", cache=cache).stdout.strip())
    assert first.name == "bin" and first.parent.parent == cache
    assert first.parent.name.startswith(expected_set_prefix())

    kwok_mod = script.parent / "modules" / "kwok" / "go.mod"
    old = pinned_version("kwok", "sigs.k8s.io/kwok")
    kwok_mod.write_text(kwok_mod.read_text().replace(f"sigs.k8s.io/kwok {old}", "sigs.k8s.io/kwok v9.9.9"))
    bumped = Path(run_build(script, "--print-bin-dir", cache=cache).stdout.strip())
    assert bumped != first
    assert "_kwok-v9.9.9_" in bumped.parent.name


def test_kubernetes_modules_must_pin_one_release(tmp_path: Path) -> None:
    script = copy_build_inputs(tmp_path / "inputs")
    kubectl_mod = script.parent / "modules" / "kubectl" / "go.mod"
    release = pinned_version("kubectl", "k8s.io/kubernetes")
    kubectl_mod.write_text(kubectl_mod.read_text().replace(f"k8s.io/kubernetes {release}", "k8s.io/kubernetes v1.1.1"))
    result = run_build(script, "--print-bin-dir", cache=tmp_path / "cache")
    assert result.returncode != 0
    assert "modules/kubectl/go.mod pins a different k8s.io/kubernetes" in result.stderr


def test_unknown_binary_is_rejected_by_name(tmp_path: Path) -> None:
    result = run_build(BUILD_SCRIPT, "kube-proxy", cache=tmp_path / "cache")
    assert result.returncode != 0
    assert "unknown binary 'kube-proxy'" in result.stderr
    assert not (tmp_path / "cache").exists()


def test_a_built_set_is_a_silent_no_op(k8s_binaries: ClusterBinaries) -> None:
    before = {name: k8s_binaries.path(name).stat().st_mtime_ns for name in BINARY_NAMES}
    result = run_build(BUILD_SCRIPT)
    assert result.returncode == 0
    assert result.stdout.strip() == str(k8s_binaries.bin_dir)
    assert result.stderr == ""  # the warm path does not even run the go command
    assert {name: k8s_binaries.path(name).stat().st_mtime_ns for name in BINARY_NAMES} == before


def program_header_types(binary: Path) -> list[int]:
    """p_type of every program header of a little-endian ELF64 file."""
    with binary.open("rb") as f:
        header = f.read(64)
        assert header[:4] == b"\x7fELF" and header[4] == 2 and header[5] == 1, f"{binary} is not ELF64 LE"
        (phoff,) = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        types = []
        for index in range(phnum):
            f.seek(phoff + index * phentsize)
            types.append(struct.unpack("<I", f.read(4))[0])
    return types


@pytest.mark.parametrize("name", BINARY_NAMES)
def test_binaries_are_static(k8s_binaries: ClusterBinaries, name: str) -> None:
    types = program_header_types(k8s_binaries.path(name))
    assert types, f"{name} has no program headers"
    assert PT_INTERP not in types, f"{name} needs a dynamic loader (built without CGO_ENABLED=0?)"


def run_version(binaries: ClusterBinaries, name: str, *args: str) -> str:
    result = subprocess.run([str(binaries.path(name)), *args], capture_output=True, text=True, check=True)
    return result.stdout + result.stderr


def test_tools_report_their_pinned_versions(k8s_binaries: ClusterBinaries) -> None:
    etcd = pinned_version("etcd", "go.etcd.io/etcd/server/v3").lstrip("v")
    assert f"etcd Version: {etcd}" in run_version(k8s_binaries, "etcd", "--version")
    assert pinned_version("kwok", "sigs.k8s.io/kwok") in run_version(k8s_binaries, "kwok", "--version")
    release = pinned_version("kube-scheduler", "k8s.io/kubernetes")
    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        assert run_version(k8s_binaries, name, "--version").strip() == f"Kubernetes {release}"


def test_kuberay_crds_and_kwok_stages_are_copied(k8s_binaries: ClusterBinaries) -> None:
    kinds = set()
    for path in sorted(k8s_binaries.kuberay_crd_dir.glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["group"] == "ray.io"
        kinds.add(crd["spec"]["names"]["kind"])
        if crd["spec"]["names"]["kind"] == "RayJob":
            schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]
            spec = schema["properties"]["spec"]["properties"]
            # The RayJob fields forkrl generates; deletionStrategy is new in KubeRay v1.5.
            assert {"submissionMode", "shutdownAfterJobFinishes", "backoffLimit", "deletionStrategy"} <= set(spec)
            # ... and authOptions (Ray token auth) in KubeRay v1.5.1.
            cluster = spec["rayClusterSpec"]["properties"]
            assert cluster["authOptions"]["properties"]["mode"]["enum"] == ["disabled", "token"]
    assert kinds == {"RayCluster", "RayJob", "RayService"}
    stages = {yaml.safe_load(p.read_text())["metadata"]["name"] for p in k8s_binaries.kwok_stage_dir.glob("*.yaml")}
    assert stages == {"node-initialize", "node-heartbeat-with-lease", "pod-ready", "pod-complete", "pod-delete"}
