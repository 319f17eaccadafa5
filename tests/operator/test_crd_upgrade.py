"""The `forkrl` chart upgrades the RLVRJob CRD (a template guarded by crds.manage, not crds/, which Helm
installs once and never upgrades), on a control plane of its own: a job made under the old CRD survives
each upgrade, the new schema is served afterwards, and `helm uninstall` keeps the CRD and the jobs."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from forkrl.operator.crd import CRD_PATH, crd_manifest, stale_files
from tests.cluster.binaries import ClusterBinaries
from tests.cluster.controlplane import ControlPlane, KubectlError
from tests.operator.harness import CHART, REPO, get_job, rlvrjob

RELEASE = ("forkrl", "-n", "forkrl-system")
VALUES = ("--set", "operator.replicas=0")
NAMESPACE = "team"
UPGRADED = " (upgraded by test_crd_upgrade)"


@pytest.fixture(scope="module")
def own_cluster(k8s_binaries: ClusterBinaries) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver only: the CRD is cluster-wide, so the shared test cluster's must not change."""
    cluster = ControlPlane(k8s_binaries).start(controller_manager=False)
    try:
        cluster.kubectl("create", "namespace", "forkrl-system")
        cluster.kubectl("create", "namespace", NAMESPACE)
        yield cluster
    finally:
        cluster.stop()


def retain_schema(crd: dict[str, Any]) -> dict[str, Any]:
    """The `create_claim` properties of a CRD's spec schema."""
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    storage = root["properties"]["spec"]["properties"]["cluster"]["properties"]["storage"]
    return storage["properties"]["create_claim"]["properties"]


def chart_copy(tmp_path: Path, version: str) -> Path:
    dest = tmp_path / f"forkrl-{version}"
    shutil.copytree(CHART, dest)
    meta = yaml.safe_load((dest / "Chart.yaml").read_text())
    (dest / "Chart.yaml").write_text(yaml.safe_dump({**meta, "version": version}, sort_keys=False))
    return dest


def previous_chart(tmp_path: Path) -> Path:
    """This chart laid out as 0.1.0 was: the CRD in crds/ (installed once, never upgraded), without the keep
    annotation and without what the CRD gained since (cluster.storage.create_claim.retain)."""
    dest = chart_copy(tmp_path, "0.1.0")
    crd = crd_manifest()
    del crd["metadata"]["annotations"]
    del retain_schema(crd)["retain"]
    (dest / "crds" / "rlvrjobs.forkrl.dev.yaml").write_text(yaml.safe_dump(crd, sort_keys=False))
    (dest / "templates" / "crds.yaml").unlink()
    shutil.rmtree(dest / "files" / "crds")
    return dest


def next_chart(tmp_path: Path) -> Path:
    """This chart with a changed CRD (another description), as a later version would ship it."""
    dest = chart_copy(tmp_path, "0.2.1")
    crd = crd_manifest()
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"] += UPGRADED
    (dest / CRD_PATH.relative_to("helm/forkrl")).write_text(yaml.safe_dump(crd, sort_keys=False))
    return dest


def test_the_chart_renders_the_generated_crd_and_keeps_it_on_uninstall(forkrl_cluster: ControlPlane) -> None:
    assert stale_files() == []  # `forkrl crd --check`: the file the template renders is current
    docs = [doc for doc in yaml.safe_load_all(forkrl_cluster.helm("template", "demo", str(CHART)).stdout) if doc]
    (crd,) = [doc for doc in docs if doc["kind"] == "CustomResourceDefinition"]
    assert crd == crd_manifest() == yaml.safe_load((REPO / CRD_PATH).read_text())
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    unmanaged = forkrl_cluster.helm("template", "demo", str(CHART), "--set", "crds.manage=false").stdout
    assert "CustomResourceDefinition" not in unmanaged
    # Only kopf's peering CRD is left in crds/ (install-only).
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == ["clusterkopfpeerings.kopf.dev.yaml"]


def served(cluster: ControlPlane, job: dict[str, Any]) -> bool:
    """Whether the API server accepts the job (server-side dry run, unknown fields refused)."""
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(job), check=False)
    return result.returncode == 0


def test_helm_upgrade_upgrades_the_crd_and_jobs_survive_every_step(own_cluster: ControlPlane, tmp_path: Path) -> None:
    cluster = own_cluster
    cluster.helm("install", *RELEASE, str(previous_chart(tmp_path)), *VALUES)
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/rlvrjobs.forkrl.dev")
    cluster.apply(rlvrjob("exp", NAMESPACE))
    before = get_job(cluster, NAMESPACE, "exp")
    not_retained = rlvrjob("owned", NAMESPACE, {"cluster": {"storage": {"create_claim": {"retain": False}}}})
    with pytest.raises(KubectlError, match=r'unknown field "spec\.cluster\.storage\.create_claim\.retain"'):
        cluster.apply(not_retained, "--dry-run=server")

    # 0.1.0 -> this chart: Helm will not adopt the CRD that crds/ installed unless told to, once.
    refused = cluster.helm("upgrade", *RELEASE, str(CHART), *VALUES, check=False)
    assert refused.returncode != 0 and "invalid ownership metadata" in refused.stderr
    cluster.helm("upgrade", *RELEASE, str(CHART), *VALUES, "--take-ownership")
    crd = cluster.kubectl_json("get", "crd", "rlvrjobs.forkrl.dev")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == "forkrl"
    assert retain_schema(crd)["retain"]["default"] is True
    cluster.wait_for(lambda: served(cluster, not_retained), "the upgraded schema to be served", 30)
    assert get_job(cluster, NAMESPACE, "exp")["metadata"]["uid"] == before["metadata"]["uid"]

    # This chart -> a later one with a changed CRD: a plain `helm upgrade`.
    cluster.helm("upgrade", *RELEASE, str(next_chart(tmp_path)), *VALUES)
    cluster.wait_for(
        lambda: UPGRADED in cluster.kubectl("explain", "rlvrjobs.forkrl.dev").stdout,
        "kubectl explain to show the upgraded CRD's description",
        30,
    )
    job = get_job(cluster, NAMESPACE, "exp")
    assert job["metadata"]["uid"] == before["metadata"]["uid"] and job["spec"] == before["spec"]

    # helm uninstall: the CRD and the jobs stay (helm.sh/resource-policy: keep).
    cluster.helm("uninstall", *RELEASE)
    assert cluster.kubectl_json("get", "crd", "rlvrjobs.forkrl.dev")["metadata"]["name"] == "rlvrjobs.forkrl.dev"
    assert get_job(cluster, NAMESPACE, "exp")["metadata"]["uid"] == before["metadata"]["uid"]
