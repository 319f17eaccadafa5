"""Names, labels and owner references of everything an RLVRJob creates (one place, so the builders,
the reconciler and the tests agree)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from forkrl.operator.resource import API_VERSION, KIND

FIELD_MANAGER = "forkrl-operator"
JOB_LABEL = "forkrl.dev/job"
# On a checkpoint claim kept after its job (no owner reference); the operator never deletes these.
RETAINED_LABEL = "forkrl.dev/retained"
# The uid of the RLVRJob that last applied a retained claim (tells an adopted claim from its own).
JOB_UID_ANNOTATION = "forkrl.dev/job-uid"
RAY_JOB_LABEL = "forkrl.dev/ray-job"
COMPONENT_LABEL = "app.kubernetes.io/component"
HASH_ANNOTATION = "forkrl.dev/desired-hash"
SERVICE_PORT = 8000
CONFIG_MOUNT = "/etc/forkrl"
SPEC_FILE = "spec.yaml"
VERIFIER_FILE = "verifier.yaml"
# Keys of the `<job>-status` ConfigMap the controller writes (see operator/README.md).
PROGRESS_KEYS = ("step", "reward", "accuracy", "weightVersion", "checkpoint", "updatedAt")


@dataclass(frozen=True)
class JobNames:
    """Names of one RLVRJob's children."""

    job: str
    namespace: str

    @property
    def config(self) -> str:
        return f"{self.job}-config"

    @property
    def status(self) -> str:
        return f"{self.job}-status"

    @property
    def controller(self) -> str:
        """ServiceAccount, Role and RoleBinding of the controller (the Ray head)."""
        return f"{self.job}-controller"

    @property
    def workload(self) -> str:
        """ServiceAccount of the rollout and learner pods (no API access; carries workload identity)."""
        return f"{self.job}-workload"

    def control(self, uid: str) -> str:
        """Secret holding the job's control token (rollout control endpoints, weight-sync rendezvous). Named
        after the job's uid too: a job created again under the same name never meets the Secret of the old
        one, which the garbage collector is about to delete."""
        return f"{self.job}-control-{uid[:8]}"

    @property
    def rollout(self) -> str:
        return f"{self.job}-rollout"

    @property
    def verifier(self) -> str:
        return f"{self.job}-verifier"

    @property
    def claim(self) -> str:
        return f"{self.job}-checkpoints"

    @property
    def pod_monitor(self) -> str:
        return self.job

    def ray_job(self, attempt: int) -> str:
        """The RayJob of an attempt: `<job>` first, then `<job>-r1`, `<job>-r2`, ..."""
        return self.job if attempt == 0 else f"{self.job}-r{attempt}"

    def service_url(self, service: str) -> str:
        return f"http://{service}.{self.namespace}.svc:{SERVICE_PORT}"

    @property
    def rollout_host(self) -> str:
        """DNS name of the headless rollout Service: one A record per ready replica."""
        return f"{self.rollout}.{self.namespace}.svc"


def labels(job: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "forkrl",
        "app.kubernetes.io/instance": job,
        COMPONENT_LABEL: component,
        "app.kubernetes.io/part-of": "forkrl",
        "app.kubernetes.io/managed-by": FIELD_MANAGER,
        JOB_LABEL: job,
    }


def selector(job: str, component: str) -> dict[str, str]:
    """Pod selector of a Deployment/Service (immutable, so only the two labels that never change)."""
    return {JOB_LABEL: job, COMPONENT_LABEL: component}


def owned_by(child: dict[str, Any], uid: str) -> bool:
    """Whether a (live) child has an owner reference to the RLVRJob with this uid."""
    refs = child.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


def owner_reference(job: str, uid: str) -> dict[str, object]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(
    names: JobNames,
    name: str,
    uid: str,
    component: str,
    extra_labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    owned: bool = True,
) -> dict[str, object]:
    """Labels and owner reference of a child; `owned=False` for one that outlives the job (a retained claim)."""
    meta: dict[str, object] = {
        "name": name,
        "namespace": names.namespace,
        "labels": {**labels(names.job, component), **(extra_labels or {})},
    }
    if owned:
        meta["ownerReferences"] = [owner_reference(names.job, uid)]
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta
