"""The pure child builders: exactly which objects an RLVRJob gets and what is in them (values derived by
hand from the spec), and the spec the controller runs with."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from forkrl.operator.children import build_children, manifest_hash
from forkrl.operator.context import JobContext, controller_spec
from forkrl.operator.names import HASH_ANNOTATION, JobNames
from forkrl.operator.ray_job import OVERWRITE_COMMAND_ANNOTATION, RAY_START_COMMAND
from forkrl.operator.resource import RLVRJobResourceSpec
from forkrl.trainer.spec import RLVRJobSpec
from tests.operator.harness import BASE_SPEC, deep_merge

UID = "0c1d2e3f-0000-4000-8000-000000000001"


def context(
    overrides: dict[str, Any] | None = None,
    attempt: int = 0,
    live_suspend: bool | None = None,
    name: str = "exp",
    namespace: str = "team",
    objective: dict[str, Any] | None = None,
) -> JobContext:
    data = {**deep_merge(BASE_SPEC, overrides or {}), "name": name}
    if objective is not None:
        data["objective"] = objective
    spec = RLVRJobResourceSpec.model_validate(data)
    return JobContext(JobNames(name, namespace), UID, spec, attempt, live_suspend)


def by_kind(ctx: JobContext) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["kind"], m["metadata"]["name"]): m for m in build_children(ctx)}


def container(pod_template: dict[str, Any]) -> dict[str, Any]:
    return pod_template["spec"]["containers"][0]


def test_a_job_gets_exactly_these_children_all_owned_and_labelled() -> None:
    manifests = by_kind(context())
    assert set(manifests) == {
        ("ServiceAccount", "exp-controller"),
        ("ServiceAccount", "exp-workload"),
        ("Role", "exp-controller"),
        ("RoleBinding", "exp-controller"),
        ("ConfigMap", "exp-config"),
        ("ConfigMap", "exp-status"),
        ("Service", "exp-rollout"),
        ("Deployment", "exp-rollout"),
        ("Service", "exp-verifier"),
        ("Deployment", "exp-verifier"),
        ("RayJob", "exp"),
        ("NetworkPolicy", "exp"),
    }
    for manifest in manifests.values():
        meta = manifest["metadata"]
        assert meta["namespace"] == "team"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "forkrl.dev/v1alpha1",
                "kind": "RLVRJob",
                "name": "exp",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"]["forkrl.dev/job"] == "exp"
        assert meta["labels"]["app.kubernetes.io/instance"] == "exp"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "forkrl-operator"
        assert meta["annotations"][HASH_ANNOTATION] == manifest_hash(manifest)


def test_external_verifier_and_pod_monitor_change_the_set() -> None:
    manifests = by_kind(
        context(
            {
                "verifier": {"endpoint": "http://verifier.shared:8000"},
                "cluster": {"monitoring": {"pod_monitor": True}, "storage": {"create_claim": {"size": "50Gi"}}},
            }
        )
    )
    assert ("Deployment", "exp-verifier") not in manifests and ("Service", "exp-verifier") not in manifests
    monitor = manifests[("PodMonitor", "exp")]
    assert monitor["spec"]["selector"] == {"matchLabels": {"forkrl.dev/job": "exp"}}
    claim = manifests[("PersistentVolumeClaim", "exp-checkpoints")]
    assert claim["spec"] == {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "50Gi"}}}


def test_a_created_claim_is_retained_by_default_and_owned_only_with_retain_false() -> None:
    retained = by_kind(context({"cluster": {"storage": {"create_claim": {"size": "50Gi"}}}}))
    meta = retained[("PersistentVolumeClaim", "exp-checkpoints")]["metadata"]
    assert "ownerReferences" not in meta  # the garbage collector never deletes it
    assert meta["labels"]["forkrl.dev/retained"] == "true" and meta["labels"]["forkrl.dev/job"] == "exp"
    assert meta["annotations"]["forkrl.dev/job-uid"] == UID
    # Every other child is still owned.
    assert all(m["metadata"]["ownerReferences"] for key, m in retained.items() if key[0] != "PersistentVolumeClaim")
    owned = by_kind(context({"cluster": {"storage": {"create_claim": {"size": "50Gi", "retain": False}}}}))
    meta = owned[("PersistentVolumeClaim", "exp-checkpoints")]["metadata"]
    assert [ref["uid"] for ref in meta["ownerReferences"]] == [UID]
    assert "forkrl.dev/retained" not in meta["labels"] and "forkrl.dev/job-uid" not in meta.get("annotations", {})


def test_an_existing_claim_keeps_its_own_spec() -> None:
    """A claim's spec is immutable (it may only grow): a claim adopted by a job created again under the same
    name keeps its size, access mode and class, whatever the new spec asks."""
    overrides = {"cluster": {"storage": {"create_claim": {"size": "50Gi", "storage_class_name": "fast"}}}}
    spec = RLVRJobResourceSpec.model_validate({**deep_merge(BASE_SPEC, overrides), "name": "exp"})
    live = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "80Gi"}},
        "storageClassName": "standard",
        "volumeName": "pv-1",
        "volumeMode": "Filesystem",
    }
    ctx = JobContext(JobNames("exp", "team"), UID, spec, live_claim_spec=live)
    claim = by_kind(ctx)[("PersistentVolumeClaim", "exp-checkpoints")]
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "80Gi"}},
        "storageClassName": "standard",
    }  # only the fields the operator sets; volumeName and volumeMode stay the server's


def test_ray_job_targets_kuberay_http_mode_without_kuberay_retries() -> None:
    ray_job = by_kind(context())[("RayJob", "exp")]
    spec = ray_job["spec"]
    assert spec["submissionMode"] == "HTTPMode"
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] == 0 and spec["suspend"] is False
    assert spec["entrypoint"] == "forkrl train /etc/forkrl/spec.yaml --resume --quiet"
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]
    assert head["spec"]["serviceAccountName"] == "exp-controller"
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container(head)["env"]}
    assert env["FORKRL_STATUS_CONFIGMAP"] == "exp-status"
    assert env["FORKRL_ROLLOUT_SERVICE"] == "exp-rollout.team.svc"
    assert env["FORKRL_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert container(head)["image"] == "registry.test/forkrl:t1"
    assert container(head)["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}
    mounts = {m["mountPath"]: m["name"] for m in container(head)["volumeMounts"]}
    assert mounts == {"/etc/forkrl": "config", "/var/lib/forkrl": "storage", "/dev/shm": "dshm", "/tmp": "tmp"}


def test_the_ray_cluster_uses_token_authentication_unless_turned_off() -> None:
    """KubeRay (>= 1.5.1) then makes the token Secret, puts it in every Ray container and sends it with the
    job submission; the real-pod test checks that the dashboard refuses a caller without it."""
    cluster = by_kind(context())[("RayJob", "exp")]["spec"]["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}
    assert int(cluster["rayVersion"].split(".")[0]) >= 2 and int(cluster["rayVersion"].split(".")[1]) >= 52
    off = by_kind(context({"cluster": {"ray_token_auth": False}}))[("RayJob", "exp")]["spec"]["rayClusterSpec"]
    assert off["authOptions"] == {"mode": "disabled"}


def test_ray_start_is_pid_1_of_every_ray_pod_so_sigterm_reaches_it() -> None:
    cluster = by_kind(context())[("RayJob", "exp")]["spec"]["rayClusterSpec"]
    for template in (cluster["headGroupSpec"]["template"], cluster["workerGroupSpecs"][0]["template"]):
        assert template["metadata"]["annotations"][OVERWRITE_COMMAND_ANNOTATION] == "true"
        assert container(template)["command"] == RAY_START_COMMAND and "args" not in container(template)
    # The command in a real bash, with a stand-in for KubeRay's generated `ray start ...` (quoted JSON as
    # KubeRay writes --resources): the program replaces bash (same PID, so it is PID 1 in the pod) and gets
    # its arguments unquoted.
    stand_in = (f"{sys.executable} -c 'import os, sys; print(os.getpid(), sys.argv[1:])' "
                """--resources='{"host0": 1}' --block""")
    process = subprocess.Popen(RAY_START_COMMAND, env={"KUBERAY_GEN_RAY_START_CMD": stand_in, "PATH": "/usr/bin:/bin"},
                               stdout=subprocess.PIPE, text=True)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert out.split(" ", 1) == [str(process.pid), """['--resources={"host0": 1}', '--block']\n"""]


def test_workload_identity_reaches_the_pods_that_touch_storage_and_never_the_verifier() -> None:
    identity = {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/forkrl"}
    manifests = by_kind(context({"cluster": {"service_account": {"annotations": identity}}}))
    def annotations(manifest: dict[str, Any]) -> dict[str, str]:
        return {k: v for k, v in manifest["metadata"]["annotations"].items() if k != HASH_ANNOTATION}

    for account in ("exp-controller", "exp-workload"):
        assert annotations(manifests[("ServiceAccount", account)]) == identity
    cluster = manifests[("RayJob", "exp")]["spec"]["rayClusterSpec"]
    accounts = {
        "head": cluster["headGroupSpec"]["template"]["spec"],
        "learner": cluster["workerGroupSpecs"][0]["template"]["spec"],
        "rollout": manifests[("Deployment", "exp-rollout")]["spec"]["template"]["spec"],
        "verifier": manifests[("Deployment", "exp-verifier")]["spec"]["template"]["spec"],
    }
    assert {k: s.get("serviceAccountName") for k, s in accounts.items()} == {
        "head": "exp-controller", "learner": "exp-workload", "rollout": "exp-workload", "verifier": None}
    # Only the controller talks to the API server (its status ConfigMap): nobody else mounts a token.
    assert {k: s.get("automountServiceAccountToken", True) for k, s in accounts.items()} == {
        "head": True, "learner": False, "rollout": False, "verifier": False}
    assert annotations(by_kind(context())[("ServiceAccount", "exp-workload")]) == {}


def test_learner_pods_follow_ranks_per_pod_and_per_rank_resources() -> None:
    # 24 ranks, 8 per pod -> 3 pods of 8 GPUs, 8 x 1.5 = 12 CPUs, 8 x 8Gi = 64Gi each.
    ctx = context({"resources": {"learner_ranks": 24, "cpus_per_learner": 1.5}, "schedule": {"samples_per_prompt": 12}})
    group = by_kind(ctx)[("RayJob", "exp")]["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (3, 3, 3)
    worker = container(group["template"])
    assert worker["resources"]["limits"] == {"cpu": "12", "memory": "64Gi", "nvidia.com/gpu": "8"}
    assert worker["resources"]["requests"] == worker["resources"]["limits"]
    assert group["template"]["metadata"]["labels"]["forkrl.dev/ray-job"] == "exp"
    # Fewer ranks than a pod holds: one pod with exactly those ranks.
    small = by_kind(context({"resources": {"learner_ranks": 4, "gpus_per_learner": 0.5}}))
    group = small[("RayJob", "exp")]["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert group["replicas"] == 1
    assert container(group["template"])["resources"]["limits"] == {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": "2"}


def test_retry_attempts_get_their_own_ray_job_name() -> None:
    manifests = by_kind(context(attempt=2))
    ray_job = manifests[("RayJob", "exp-r2")]
    head = ray_job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    assert head["metadata"]["labels"]["forkrl.dev/ray-job"] == "exp-r2"
    assert {"name": "FORKRL_ATTEMPT", "value": "2"} in container(head)["env"]


def test_rollout_deployment_runs_the_rollout_cli_with_the_spec_values() -> None:
    deployment = by_kind(
        context(
            {
                "seed": 7,
                "rollout": {"max_batch_size": 96, "gpu_memory_utilization": 0.7},
                "model": {"max_prompt_tokens": 100, "max_response_tokens": 300},
                "cluster": {"rollout": {"gpus": 2, "image": "registry.test/vllm:x"}},
            }
        )
    )[("Deployment", "exp-rollout")]
    assert deployment["spec"]["replicas"] == 2
    rollout = container(deployment["spec"]["template"])
    assert rollout["image"] == "registry.test/vllm:x"
    assert rollout["command"] == ["python", "-m", "forkrl.rollout"]
    args = rollout["args"]
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert pairs == {
        "--engine": "vllm",
        "--model": "/models/qwen2.5-math-1.5b",
        "--host": "0.0.0.0",
        "--port": "8000",
        "--run": "exp",
        "--replica": "$(POD_NAME)",
        "--seed": "7",
        "--max-context": "400",
        "--in-flight-policy": "finish",
        "--tensor-parallel-size": "2",
        "--max-num-seqs": "96",
        "--gpu-memory-utilization": "0.7",
    }
    assert rollout["resources"]["limits"] == {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "2"}
    assert deployment["spec"]["selector"]["matchLabels"] == {
        "forkrl.dev/job": "exp",
        "app.kubernetes.io/component": "rollout",
    }


def test_an_hf_rollout_pod_decodes_with_the_spec_thread_count_not_every_core_of_its_node() -> None:
    deployment = by_kind(context({"rollout": {"engine": "hf", "max_batch_size": 48, "torch_threads": 3}}))
    args = container(deployment[("Deployment", "exp-rollout")]["spec"]["template"])["args"]
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert (pairs["--engine"], pairs["--max-batch-size"], pairs["--num-threads"]) == ("hf", "48", "3")
    assert "--max-num-seqs" not in pairs
    default = by_kind(context({"rollout": {"engine": "hf"}}))[("Deployment", "exp-rollout")]
    default_args = container(default["spec"]["template"])["args"]
    assert default_args[default_args.index("--num-threads") + 1] == "1"


def test_rollout_probes_allow_a_long_load_yet_report_ready_within_seconds() -> None:
    rollout = container(by_kind(context())[("Deployment", "exp-rollout")]["spec"]["template"])
    startup, readiness = rollout["startupProbe"], rollout["readinessProbe"]
    assert startup["httpGet"]["path"] == "/healthz" and readiness["httpGet"]["path"] == "/readyz"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30 * 60  # a large checkpoint into vLLM
    # The learner starts once the replicas are Ready: a probe period is start-up latency of the whole job.
    assert startup["periodSeconds"] <= 2 and readiness["periodSeconds"] <= 5


def test_verifier_deployment_gets_its_config_and_a_worker_per_cpu() -> None:
    manifests = by_kind(context({"cluster": {"verifier": {"cpu": "3500m", "replicas": 3}}}))
    deployment = manifests[("Deployment", "exp-verifier")]
    assert deployment["spec"]["replicas"] == 3
    verifier = container(deployment["spec"]["template"])
    assert verifier["args"][verifier["args"].index("--workers") + 1] == "3"  # floor(3.5 CPUs)
    config = yaml.safe_load(manifests[("ConfigMap", "exp-config")]["data"]["verifier.yaml"])
    assert config["run"] == "exp" and config["math"]["rewards_boxed"] == {"correct": 1.0, "incorrect": 0.0}
    service = manifests[("Service", "exp-verifier")]["spec"]
    assert "clusterIP" not in service and service["ports"][0]["port"] == 8000
    rollout_service = manifests[("Service", "exp-rollout")]["spec"]
    assert rollout_service["clusterIP"] == "None" and rollout_service["publishNotReadyAddresses"] is True


def test_placement_scheduling_and_priority_reach_the_pods_and_the_ray_job() -> None:
    ctx = context(
        {
            "cluster": {
                "learner": {
                    "node_selector": {"pool": "h100"},
                    "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
                },
                "scheduling": {"batch_scheduler": "volcano", "queue_name": "rl", "priority_class_name": "high"},
            }
        }
    )
    ray_job = by_kind(ctx)[("RayJob", "exp")]
    assert ray_job["metadata"]["labels"]["ray.io/scheduler-name"] == "volcano"
    assert ray_job["metadata"]["labels"]["volcano.sh/queue-name"] == "rl"
    assert ray_job["metadata"]["labels"]["ray.io/priority-class-name"] == "high"
    worker = ray_job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert worker["nodeSelector"] == {"kubernetes.io/hostname": "kwok-gpu-0", "pool": "h100"}  # merged with BASE_SPEC
    assert worker["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert worker["priorityClassName"] == "high"


def test_kueue_creates_the_ray_job_suspended_and_then_leaves_suspend_to_kueue() -> None:
    kueue = {"cluster": {"scheduling": {"batch_scheduler": "kueue", "queue_name": "team-queue"}}}
    first = by_kind(context(kueue))[("RayJob", "exp")]
    assert first["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-queue"
    assert first["spec"]["suspend"] is True
    admitted = by_kind(context(kueue, live_suspend=False))[("RayJob", "exp")]
    assert admitted["spec"]["suspend"] is False  # Kueue admitted it: keep
    suspended = by_kind(context({**kueue, "suspend": True}, live_suspend=False))[("RayJob", "exp")]
    assert suspended["spec"]["suspend"] is True
    with pytest.raises(ValidationError, match="queue_name is required"):
        context({"cluster": {"scheduling": {"batch_scheduler": "kueue"}}})


def test_a_suspended_ray_job_is_resumed_only_once_the_services_are_ready() -> None:
    spec = RLVRJobResourceSpec.model_validate({**BASE_SPEC, "name": "exp"})

    def suspend(live: bool | None, hold: bool) -> bool:
        ctx = JobContext(JobNames("exp", "team"), UID, spec, 0, live, hold_learner=hold)
        return by_kind(ctx)[("RayJob", "exp")]["spec"]["suspend"]

    assert suspend(live=True, hold=True) is True  # resumed, services not ready yet: stays suspended
    assert suspend(live=True, hold=False) is False
    assert suspend(live=False, hold=True) is False  # a running learner is never stopped for the services


def test_suspend_scales_services_to_zero_and_suspends_the_ray_job() -> None:
    manifests = by_kind(context({"suspend": True}))
    assert manifests[("Deployment", "exp-rollout")]["spec"]["replicas"] == 0
    assert manifests[("Deployment", "exp-verifier")]["spec"]["replicas"] == 0
    assert manifests[("RayJob", "exp")]["spec"]["suspend"] is True


def test_controller_spec_uses_the_services_and_the_job_volume() -> None:
    ctx = context(
        {
            "rollout": {"endpoints": ["http://extra:8000"]},
            "checkpoint": {"dir": "/abs/ckpt"},
            "observability": {"run_dir": "runs/{name}"},
            "cluster": {"storage": {"claim_name": "shared", "mount_path": "/mnt/x"}},
        }
    )
    spec = controller_spec(ctx)
    assert spec.name == "exp"
    assert spec.rollout.replicas == 0
    assert spec.rollout.endpoints == ["http://extra:8000", "http://exp-rollout.team.svc:8000"]
    assert spec.verifier.endpoint == "http://exp-verifier.team.svc:8000"
    assert spec.checkpoint.dir == "/abs/ckpt"  # absolute: kept
    assert spec.observability.run_dir == "/mnt/x/runs/{name}"
    assert spec.observability.metrics_port == 9090 and spec.observability.progress == "lines"
    # The ConfigMap holds exactly this spec, and `forkrl train` reads it back unchanged.
    text = by_kind(ctx)[("ConfigMap", "exp-config")]["data"]["spec.yaml"]
    assert RLVRJobSpec.model_validate(yaml.safe_load(text)) == spec
    uri = controller_spec(context({"cluster": {"storage": {"uri": "s3://bucket/rl/"}}}))
    assert uri.checkpoint.dir == "s3://bucket/rl/{name}/checkpoints"


def test_a_null_that_disables_survives_into_the_controller_spec() -> None:
    ctx = context({"observability": {"metrics_port": None}}, objective={"name": "dapo", "dual_clip_c": None})
    spec = controller_spec(ctx)
    assert spec.objective.dual_clip_c is None
    assert spec.observability.metrics_port is None
    head = by_kind(ctx)[("RayJob", "exp")]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    assert set(head["metadata"]["annotations"]) == {OVERWRITE_COMMAND_ANNOTATION}  # nothing to scrape


def test_hash_is_stable_and_follows_the_spec() -> None:
    first, again = by_kind(context()), by_kind(context())
    assert first == again
    scaled = by_kind(context({"rollout": {"replicas": 3}}))
    key = ("Deployment", "exp-rollout")
    assert (
        scaled[key]["metadata"]["annotations"][HASH_ANNOTATION]
        != first[key]["metadata"]["annotations"][HASH_ANNOTATION]
    )
    assert scaled[("RayJob", "exp")] == first[("RayJob", "exp")]  # replicas do not touch the learner


def test_cluster_rules_of_the_resource_spec() -> None:
    with pytest.raises(ValidationError, match="ranks_per_pod"):
        context({"resources": {"learner_ranks": 12}, "schedule": {"samples_per_prompt": 12}})
    with pytest.raises(ValidationError, match=r"model\.tiny on a cluster"):
        context({"model": {"path": None, "tiny": {}}})
    with pytest.raises(ValidationError, match="at most one of"):
        context({"cluster": {"storage": {"claim_name": "a", "uri": "s3://b/c"}}})


def _pod_specs(ctx: JobContext) -> dict[str, dict[str, Any]]:
    manifests = by_kind(ctx)
    cluster_spec = manifests[("RayJob", "exp")]["spec"]["rayClusterSpec"]
    return {
        "rollout": manifests[("Deployment", "exp-rollout")]["spec"]["template"]["spec"],
        "verifier": manifests[("Deployment", "exp-verifier")]["spec"]["template"]["spec"],
        "head": cluster_spec["headGroupSpec"]["template"]["spec"],
        "worker": cluster_spec["workerGroupSpecs"][0]["template"]["spec"],
    }


def test_claim_mounts_reach_every_forkrl_container() -> None:
    mounts = [
        {"name": "code", "claim_name": "forkrl-code", "mount_path": "/opt/forkrl"},
        {"name": "data", "claim_name": "datasets", "mount_path": "/data", "read_only": False},
    ]
    for where, pod in _pod_specs(context({"cluster": {"mounts": mounts}})).items():
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["code"]["persistentVolumeClaim"] == {"claimName": "forkrl-code", "readOnly": True}, where
        assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "datasets", "readOnly": False}, where
        by_path = {m["mountPath"]: m for m in container({"spec": pod})["volumeMounts"]}
        assert (by_path["/opt/forkrl"]["name"], by_path["/opt/forkrl"]["readOnly"]) == ("code", True), where
        assert (by_path["/data"]["name"], by_path["/data"]["readOnly"]) == ("data", False), where
    for pod in _pod_specs(context()).values():
        assert not {"code", "data"} & {v["name"] for v in pod["volumes"]}


def test_claim_mounts_may_not_take_the_operators_own_names_or_paths() -> None:
    def mount(name: str, path: str) -> dict[str, str]:
        return {"name": name, "claim_name": "c", "mount_path": path}

    with pytest.raises(ValidationError, match=r"cluster\.mounts: names"):
        context({"cluster": {"mounts": [mount("storage", "/x")]}})
    with pytest.raises(ValidationError, match=r"cluster\.mounts: names"):
        context({"cluster": {"mounts": [mount("a", "/x"), mount("a", "/y")]}})
    with pytest.raises(ValidationError, match="mount_path /etc/forkrl"):
        context({"cluster": {"mounts": [mount("a", "/etc/forkrl/")]}})
    with pytest.raises(ValidationError, match="mount_path /var/lib/forkrl"):
        context({"cluster": {"mounts": [mount("a", "/var/lib/forkrl")]}})
    with pytest.raises(ValidationError, match="mount_path /x"):
        context({"cluster": {"mounts": [mount("a", "/x"), mount("b", "/x")]}})


def test_rollout_replicas_and_learner_pods_spread_over_nodes_as_a_preference() -> None:
    pods = _pod_specs(context())
    for where in ("rollout", "worker"):
        (constraint,) = pods[where]["topologySpreadConstraints"]
        assert constraint["topologyKey"] == "kubernetes.io/hostname"
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
        component = "rollout" if where == "rollout" else "learner"
        assert constraint["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == component
    assert "topologySpreadConstraints" not in pods["head"] and "topologySpreadConstraints" not in pods["verifier"]


def test_cpu_limits_false_keeps_requests_and_drops_only_the_cpu_limit() -> None:
    limited, unlimited = _pod_specs(context()), _pod_specs(context({"cluster": {"cpu_limits": False}}))
    for where in limited:
        before = container({"spec": limited[where]})["resources"]
        after = container({"spec": unlimited[where]})["resources"]
        assert after["requests"] == before["requests"], where
        assert "cpu" in before["limits"] and "cpu" not in after["limits"], where
        assert after["limits"] == {k: v for k, v in before["limits"].items() if k != "cpu"}, where
