"""`ClusterSpec`: where and how an RLVRJob runs on Kubernetes (images, pod sizes, placement, storage,
scheduling, retries). It sits next to the experiment (`RLVRJobSpec`) in the RLVRJob's `spec.cluster`.

Fields are snake_case like the rest of the spec; the builders in `children.py` translate them into the
camelCase Kubernetes objects. Quantities are Kubernetes resource quantities ("500m", "16Gi").
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The image built from this repository (`forkrl` CLI, Ray, vLLM, the verifier).
DEFAULT_IMAGE = "ghcr.io/forkrl/forkrl:0.1.0"
# The CUDA image (docker/Dockerfile.cuda): chart rlvrjob's cluster.gpu_image.
DEFAULT_GPU_IMAGE = "ghcr.io/forkrl/forkrl-cuda:0.1.0"
# Ray inside DEFAULT_IMAGE; KubeRay reads it from the RayCluster to pick version-specific behaviour.
DEFAULT_RAY_VERSION = "2.60.0"
# Kubernetes' resource.Quantity grammar (apimachinery/pkg/api/resource), anchored.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# A DNS-1123 subdomain (names of claims, secrets, priority classes, queues).
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Label keys and values are restricted further by the API server; this catches the obvious typos.
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Toleration(_Spec):
    """A pod toleration (Kubernetes `core/v1 Toleration`, snake_case)."""

    key: str | None = Field(None, max_length=317, description="Taint key; empty with operator Exists = every taint.")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists matches any value; Equal needs value.")
    value: str | None = Field(None, max_length=63, description="Taint value (operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to tolerate; empty = all effects."
    )
    toleration_seconds: int | None = Field(
        None, ge=0, le=31_536_000, description="How long a NoExecute taint is tolerated before eviction."
    )


class Placement(_Spec):
    """Node selection shared by every component."""

    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pods must match.")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64, description="Pod tolerations.")


class ControllerPod(Placement):
    """The Ray head pod: runs the forkrl controller (`forkrl train`) as the Ray job's driver."""

    image: str | None = Field(None, min_length=1, max_length=512, description="Image; default cluster.image.")
    cpu: str = Field("4", pattern=QUANTITY_PATTERN, description="CPU request and limit of the head pod.")
    memory: str = Field("16Gi", pattern=QUANTITY_PATTERN, description="Memory request and limit of the head pod.")


class LearnerPods(Placement):
    """Ray worker pods hosting the learner ranks (Megatron TP x PP x DP).

    Pods = learner_ranks / ranks_per_pod (one pod when learner_ranks <= ranks_per_pod). Each pod gets
    ranks x resources.gpus_per_learner GPUs (rounded up), ranks x resources.cpus_per_learner CPUs
    (rounded up) and ranks x memory_per_rank memory.
    """

    image: str | None = Field(None, min_length=1, max_length=512, description="Image; default cluster.image.")
    ranks_per_pod: int = Field(8, ge=1, le=64, description="Learner ranks per worker pod (GPUs of one node).")
    memory_per_rank: str = Field("64Gi", pattern=QUANTITY_PATTERN, description="Memory per learner rank.")
    shared_memory: str = Field(
        "16Gi", pattern=QUANTITY_PATTERN, description="Size of the /dev/shm tmpfs (NCCL and dataloaders)."
    )


class RolloutPods(Placement):
    """The rollout Deployment: one vLLM (or HF) server per replica; replicas = spec.rollout.replicas."""

    image: str | None = Field(None, min_length=1, max_length=512, description="Image; default cluster.image.")
    gpus: int = Field(1, ge=0, le=64, description="GPUs per replica (vLLM tensor-parallel size); 0 = CPU.")
    cpu: str = Field("8", pattern=QUANTITY_PATTERN, description="CPU request and limit per replica.")
    memory: str = Field("64Gi", pattern=QUANTITY_PATTERN, description="Memory request and limit per replica.")


class VerifierPods(Placement):
    """The reward-verifier Deployment (CPU only); not created when spec.verifier.endpoint is set."""

    image: str | None = Field(None, min_length=1, max_length=512, description="Image; default cluster.image.")
    replicas: int = Field(1, ge=0, le=1024, description="Verifier replicas behind one Service.")
    cpu: str = Field("4", pattern=QUANTITY_PATTERN, description="CPU request and limit per replica.")
    memory: str = Field("8Gi", pattern=QUANTITY_PATTERN, description="Memory request and limit per replica.")


class CreatedClaim(_Spec):
    """A checkpoint PersistentVolumeClaim the operator creates, named `<job>-checkpoints`.

    Retained by default: it carries no owner reference, so deleting the RLVRJob (or `helm uninstall` of
    its chart) keeps the checkpoints; a job created again with the same name reuses it. Retained claims
    are labelled `forkrl.dev/job=<job>` and `forkrl.dev/retained=true` (`kubectl delete pvc -l ...`).
    """

    size: str = Field("100Gi", pattern=QUANTITY_PATTERN, description="Requested storage.")
    storage_class_name: str | None = Field(
        None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="StorageClass; default class if unset."
    )
    access_mode: Literal["ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"] = Field(
        "ReadWriteMany", description="The head and every learner pod mount it, so usually ReadWriteMany."
    )
    retain: bool = Field(
        True,
        description="Keep the claim (and the checkpoints on it) when the RLVRJob is deleted; a job created again "
        "with the same name reuses it. false: the claim is owned by the RLVRJob and deleted with it.",
    )


class StorageSpec(_Spec):
    """Where checkpoints and run outputs live: an existing PVC, a PVC the operator creates, or an object store.

    Relative `checkpoint.dir` / `observability.run_dir` of the spec are placed under `mount_path`. Without a
    claim or URI an emptyDir is used: a retried or resumed job then starts from scratch.
    """

    claim_name: str | None = Field(
        None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Existing PersistentVolumeClaim to mount."
    )
    create_claim: CreatedClaim | None = Field(None, description="Create a PersistentVolumeClaim for this job.")
    uri: str | None = Field(
        None,
        max_length=1024,
        pattern=r"^[a-z][a-z0-9+.-]*://\S+$",
        description="Object-store URI (s3://bucket/prefix, gs://...); checkpoints go to <uri>/<job>/checkpoints.",
    )
    mount_path: str = Field(
        "/var/lib/forkrl", pattern=r"^/[^\s]*$", max_length=256, description="Where the volume is mounted."
    )


class ClaimMount(_Spec):
    """A PersistentVolumeClaim mounted into every forkrl container (datasets, model weights, shared code)."""

    name: str = Field(
        ..., max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", description="Volume name in the pods."
    )
    claim_name: str = Field(..., max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="The claim to mount.")
    mount_path: str = Field(..., pattern=r"^/[^\s]*$", max_length=256, description="Where it is mounted.")
    read_only: bool = Field(True, description="Mount read-only (the default: inputs, not outputs).")


# Volumes and paths the operator's own pods already use; a mount may not take them.
RESERVED_VOLUME_NAMES = ("config", "storage", "dshm", "tmp")
RESERVED_MOUNT_PATHS = ("/etc/forkrl", "/dev/shm", "/tmp")  # names.CONFIG_MOUNT, shared memory, the /tmp emptyDir


class SchedulingSpec(_Spec):
    """Gang scheduling of the learner through KubeRay's batch-scheduler integration, priority."""

    batch_scheduler: Literal["none", "volcano", "kueue"] = Field(
        "none",
        description="volcano: KubeRay creates a PodGroup for the RayJob (KubeRay runs with "
        "--batch-scheduler=volcano). kueue: the RayJob is created suspended and Kueue admits it whole.",
    )
    queue_name: str | None = Field(
        None,
        max_length=63,
        pattern=LABEL_VALUE_PATTERN,
        description="Volcano queue or Kueue LocalQueue (label volcano.sh/queue-name or kueue.x-k8s.io/queue-name).",
    )
    priority_class_name: str | None = Field(
        None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="PriorityClass of every pod."
    )


class MonitoringSpec(_Spec):
    """Prometheus scraping of the controller, rollout and verifier pods."""

    pod_monitor: bool = Field(
        False, description="Create a prometheus-operator PodMonitor (needs its CRD); pods are annotated either way."
    )
    controller_metrics_port: int = Field(
        9090, ge=1024, le=65535, description="Port of the controller's /metrics when the spec asks for any free port."
    )


LABELS_DESCRIPTION = "matchLabels; {} matches every one"


class ServiceAccountSpec(_Spec):
    """The job's ServiceAccounts: `<job>-controller` (Ray head) and `<job>-workload` (rollout and learner
    pods). The verifier, which runs model-written programs, never gets either."""

    annotations: dict[str, str] = Field(
        default_factory=dict,
        max_length=64,
        description="Annotations of both accounts: workload identity for object stores, e.g. "
        "eks.amazonaws.com/role-arn or iam.gke.io/gcp-service-account.",
    )


class NetworkPeer(_Spec):
    """Pods outside the job that may connect: those matching `pod_labels` in the namespaces matching
    `namespace_labels` (null: only the job's own namespace)."""

    namespace_labels: dict[str, str] | None = Field(
        default_factory=dict, description=f"Namespaces, by label ({LABELS_DESCRIPTION}); null: the job's namespace."
    )
    pod_labels: dict[str, str] = Field(default_factory=dict, description=f"Pods, by label ({LABELS_DESCRIPTION}).")


class NetworkPolicySpec(_Spec):
    """A NetworkPolicy admitting only the job's own pods to every port of its pods, plus the listed peers to
    the ports they need. Enforced only where the cluster's network plugin implements NetworkPolicy."""

    enabled: bool = Field(True, description="Create the job's NetworkPolicy.")
    metrics_from: list[NetworkPeer] = Field(
        default_factory=lambda: [NetworkPeer(pod_labels={"app.kubernetes.io/name": "prometheus"})],
        max_length=16,
        description="Scrapers allowed to the metrics ports (`http`, `metrics`); default: prometheus-operator's "
        "Prometheus pods in any namespace.",
    )
    dashboard_from: list[NetworkPeer] = Field(
        default_factory=lambda: [NetworkPeer(pod_labels={"app.kubernetes.io/name": "kuberay-operator"})],
        max_length=16,
        description="Allowed to the Ray dashboard (8265; KubeRay submits the job there); default: the KubeRay "
        "operator in any namespace.",
    )
    services_from: list[NetworkPeer] = Field(
        default_factory=list,
        max_length=16,
        description="Other clients of the rollout and verifier HTTP port (an evaluation notebook); default none.",
    )


def _exactly_one(model: _Spec, *fields: str) -> _Spec:
    """A model validator's body: exactly one of `fields` is set (the CRD has the same rule in CEL)."""
    if sum(getattr(model, name) is not None for name in fields) != 1:
        raise ValueError(f"set exactly one of {', '.join(fields)}")
    return model


class KeyRef(_Spec):
    """One key of a Secret or ConfigMap in the job's namespace."""

    name: str = Field(..., max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="The Secret or ConfigMap.")
    key: str = Field(..., min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Its key.")
    optional: bool = Field(False, description="Start the pod even when the object or key is missing.")


class EnvValueFrom(_Spec):
    """Where one variable's value comes from: exactly one of a Secret key or a ConfigMap key."""

    secret_key_ref: KeyRef | None = Field(None, description="A key of a Secret (credentials).")
    config_map_key_ref: KeyRef | None = Field(None, description="A key of a ConfigMap.")

    _one = model_validator(mode="after")(lambda self: _exactly_one(self, "secret_key_ref", "config_map_key_ref"))


class EnvFromSource(_Spec):
    """Every key of a Secret or ConfigMap as environment variables (exactly one of the two)."""

    secret_ref: str | None = Field(None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="A Secret.")
    config_map_ref: str | None = Field(
        None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="A ConfigMap."
    )
    prefix: str | None = Field(None, max_length=253, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Name prefix.")
    optional: bool = Field(False, description="Start the pod even when the object is missing.")

    _one = model_validator(mode="after")(lambda self: _exactly_one(self, "secret_ref", "config_map_ref"))


class PodSecurity(_Spec):
    """The security context of every job pod. The defaults satisfy the restricted Pod Security Standard:
    a non-root user, no privilege escalation, every capability dropped, seccomp RuntimeDefault and a
    read-only root filesystem (each container writes to its volumes and an emptyDir at /tmp)."""

    run_as_user: int = Field(1000, ge=1, le=2_147_483_647, description="UID of every container (never root).")
    run_as_group: int = Field(1000, ge=0, le=2_147_483_647, description="Primary GID of every container.")
    fs_group: int | None = Field(
        1000, ge=0, le=2_147_483_647,
        description="Group that owns the pods' volumes, for volume types that support it (the checkpoint claim "
        "stays writable); null leaves ownership as the volume has it.",
    )
    read_only_root_filesystem: bool = Field(
        True, description="Mount each container's image read-only; /tmp (also HOME) is an emptyDir."
    )
    verifier_seccomp: Literal["RuntimeDefault", "Unconfined"] = Field(
        "RuntimeDefault",
        description="Seccomp profile of the verifier pods. RuntimeDefault (restricted) denies the unshare(2) "
        "the sandbox needs for its user, mount and network namespaces, so the verifier runs programs "
        "without them (rlimits and a separate process group only; a sandbox toggle set to require makes it "
        "refuse to start instead). Unconfined lets it create them, and puts the verifier outside even the baseline "
        "Pod Security Standard: its namespace must allow privileged pods.",
    )


class ClusterSpec(_Spec):
    """How the experiment maps onto Kubernetes."""

    image: str = Field(DEFAULT_IMAGE, min_length=1, max_length=512, description="Default image of every pod.")
    gpu_image: str | None = Field(
        None,
        min_length=1,
        max_length=512,
        description="Image of the pods that use GPUs (learner ranks with resources.gpus_per_learner > 0, rollout "
        "replicas with cluster.rollout.gpus > 0) unless their own image is set; default: image. Chart rlvrjob sets "
        "the CUDA image (docker/Dockerfile.cuda).",
    )
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = Field("IfNotPresent", description="Pull policy.")
    image_pull_secrets: list[str] = Field(default_factory=list, max_length=16, description="Secrets for the registry.")
    ray_version: str = Field(
        DEFAULT_RAY_VERSION, pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$", description="Ray version inside the images."
    )
    ray_token_auth: bool = Field(
        True,
        description="Ray's token authentication on the learner's Ray cluster (KubeRay `authOptions.mode: token`, "
        "KubeRay >= 1.5.1, Ray >= 2.52): KubeRay makes a per-cluster token Secret and gives it to every Ray "
        "container and to its own dashboard client, so the dashboard and the GCS refuse callers without it.",
    )
    gpu_resource: str = Field(
        "nvidia.com/gpu", min_length=1, max_length=253, description="Extended resource name of a GPU."
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables of every container.")
    env_value_from: dict[str, EnvValueFrom] = Field(
        default_factory=dict,
        max_length=128,
        description="Environment variables of every container read from a Secret or ConfigMap key (object-store "
        "credentials stay out of the RLVRJob).",
    )
    env_from: list[EnvFromSource] = Field(
        default_factory=list, max_length=16, description="Secrets and ConfigMaps whose every key becomes a variable."
    )
    cpu_limits: bool = Field(
        True,
        description="CPU limits equal to the requests (with memory: Guaranteed QoS). false: CPU requests only, "
        "pods use idle CPU of their node unthrottled (Burstable QoS; Ray still counts the requested CPUs).",
    )
    mounts: list[ClaimMount] = Field(
        default_factory=list, max_length=32, description="PersistentVolumeClaims mounted into every forkrl container."
    )
    controller: ControllerPod = Field(default_factory=ControllerPod, description="Ray head pod (the controller).")
    learner: LearnerPods = Field(default_factory=LearnerPods, description="Ray worker pods (learner ranks).")
    rollout: RolloutPods = Field(default_factory=RolloutPods, description="Rollout Deployment pods.")
    verifier: VerifierPods = Field(default_factory=VerifierPods, description="Verifier Deployment pods.")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="Checkpoint and run-output storage.")
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec, description="Gang scheduling and priority.")
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec, description="Prometheus scraping.")
    security: PodSecurity = Field(default_factory=PodSecurity, description="Security context of every job pod.")
    service_account: ServiceAccountSpec = Field(
        default_factory=ServiceAccountSpec, description="Annotations of the job's ServiceAccounts."
    )
    network_policy: NetworkPolicySpec = Field(
        default_factory=NetworkPolicySpec, description="Who may connect to the job's pods."
    )
    max_retries: int = Field(
        0,
        ge=0,
        le=100,
        description="Learner failures forkrl retries (a new RayJob resuming from the last "
        "checkpoint) before the RLVRJob fails; KubeRay's own backoffLimit stays 0.",
    )
    active_deadline_seconds: int | None = Field(
        None, ge=1, le=31_536_000, description="Wall-clock limit of one RayJob attempt (reason DeadlineExceeded)."
    )

    @model_validator(mode="after")
    def _check(self) -> ClusterSpec:
        storage = self.storage
        chosen = [name for name in ("claim_name", "create_claim", "uri") if getattr(storage, name) is not None]
        if len(chosen) > 1:
            raise ValueError(f"cluster.storage: set at most one of claim_name, create_claim, uri (got {chosen})")
        names = [m.name for m in self.mounts]
        if clash := sorted({n for n in names if names.count(n) > 1 or n in RESERVED_VOLUME_NAMES}):
            raise ValueError(
                f"cluster.mounts: names must be unique and not one of {RESERVED_VOLUME_NAMES} (got {clash})"
            )
        taken = [*RESERVED_MOUNT_PATHS, storage.mount_path]
        paths = [m.mount_path.rstrip("/") or "/" for m in self.mounts]
        for path in paths:
            if path in taken or paths.count(path) > 1:
                raise ValueError(
                    f"cluster.mounts: mount_path {path} is used twice or by the operator's own volumes ({taken})"
                )
        if both := sorted(set(self.env) & set(self.env_value_from)):
            raise ValueError(f"cluster.env and cluster.env_value_from both set {both}")
        if self.scheduling.batch_scheduler == "kueue" and self.scheduling.queue_name is None:
            raise ValueError("cluster.scheduling.queue_name is required with batch_scheduler kueue")
        return self

    def image_of(
        self, component: Literal["controller", "learner", "rollout", "verifier"], uses_gpu: bool = False
    ) -> str:
        """The component's own image, else the GPU image for a component on GPUs, else the default image."""
        return getattr(self, component).image or (self.gpu_image if uses_gpu else None) or self.image

    @property
    def has_shared_storage(self) -> bool:
        return self.storage.claim_name is not None or self.storage.create_claim is not None
