"""CEL mirrors of the spec's cross-field rules (`model_validator`s), keyed by model name.

The API server applies defaults before it validates, and every object field of the spec has a default
(see schema.DefaultsFromFactories), so rules may read nested fields without `has()`; only fields whose
default is None (or that exist in some objective variants only) need it. The rules must accept exactly
what pydantic accepts: tests/operator/test_crd_parity.py checks both verdicts on hundreds of specs.

One rule is not expressible: `learner.reference.enabled` is `bool | "auto"`, which has no structural
form, so the field is untyped and invisible to CEL. Its type and the rule "an objective with a KL term
needs the reference model" are checked by the operator (phase Failed, reason InvalidSpec).
"""

from __future__ import annotations

from pydantic import BaseModel

from forkrl.operator.resource import MAX_NAME_LENGTH
from forkrl.trainer.objectives.config import ClipCovConfig


def rule(expr: str, message: str, field: str | None = None, reason: str | None = None) -> dict[str, str]:
    out = {"rule": expr}
    out["messageExpression" if message.startswith("'") else "message"] = message
    if field is not None:
        out["fieldPath"] = field
    if reason is not None:
        out["reason"] = reason
    return out


def present(path: str) -> str:
    """`path` is set (a field whose default is None: the API server prunes an explicit null)."""
    return f"has({path})"


def or_default(path: str, model: type[BaseModel], field: str) -> str:
    """`path`, or the model's default when absent (fields of one objective variant have no CRD default)."""
    default = model.model_fields[field].default
    return f"(has({path}) ? {path} : {float(default)!r})"


def _spec_rules() -> list[dict[str, str]]:
    """RLVRJobSpec._cross_field_rules and RLVRJobResourceSpec._cluster_rules."""
    tp_pp = "(self.learner.parallel.tensor_parallel * self.learner.parallel.pipeline_parallel)"
    ranks = "self.resources.learner_ranks"
    sampling = "self.rollout.sampling"
    return [
        rule(
            f"{present(f'{sampling}.dual_temperature')} ? self.learner.temperature == {sampling}.dual_temperature.t_low"
            f" : ({present(f'{sampling}.temperature')} && self.learner.temperature == {sampling}.temperature)",
            "learner.temperature must equal rollout.sampling.temperature (which must be set), or "
            "rollout.sampling.dual_temperature.t_low under dual-temperature decoding",
            ".learner.temperature",
        ),
        rule(
            f"{ranks} % {tp_pp} == 0",
            "resources.learner_ranks must be a multiple of learner.parallel.tensor_parallel x pipeline_parallel",
            ".resources.learner_ranks",
        ),
        rule(
            f"!self.overlong.enabled || !{present('self.overlong.cache_tokens')} || "
            "self.overlong.cache_tokens <= self.model.max_response_tokens",
            "overlong.cache_tokens must not exceed model.max_response_tokens",
            ".overlong.cache_tokens",
        ),
        rule(
            f"{ranks} < {tp_pp} || (self.schedule.mini_batch_size * self.schedule.samples_per_prompt) % "
            f"({ranks} / {tp_pp}) == 0",
            "schedule.mini_batch_size x samples_per_prompt must divide evenly over the data-parallel learner ranks "
            "(resources.learner_ranks / (tensor_parallel x pipeline_parallel))",
            ".schedule.mini_batch_size",
        ),
        rule(
            f"{ranks} <= self.cluster.learner.ranks_per_pod || {ranks} % self.cluster.learner.ranks_per_pod == 0",
            "resources.learner_ranks must be at most or a multiple of cluster.learner.ranks_per_pod",
            ".resources.learner_ranks",
        ),
        rule(
            f"!{present('self.model.tiny')} || {present('self.cluster.storage.claim_name')} || "
            f"{present('self.cluster.storage.create_claim')}",
            "model.tiny on a cluster needs cluster.storage.claim_name or create_claim (shared model directory)",
            ".model.tiny",
        ),
    ]


def _cluster_rules() -> list[dict[str, str]]:
    claim, create, uri = (present(f"self.storage.{name}") for name in ("claim_name", "create_claim", "uri"))
    return [
        rule(
            f"!({claim} && {create}) && !({claim} && {uri}) && !({create} && {uri})",
            "cluster.storage: set at most one of claim_name, create_claim, uri",
            ".storage",
        ),
        rule(
            f"self.scheduling.batch_scheduler != 'kueue' || {present('self.scheduling.queue_name')}",
            "cluster.scheduling.queue_name is required with batch_scheduler kueue",
            ".scheduling.queue_name",
        ),
        rule(
            f"!{present('self.env')} || !{present('self.env_value_from')} || "
            "self.env_value_from.all(name, !(name in self.env))",
            "cluster.env and cluster.env_value_from both set a variable",
            ".env_value_from",
        ),
    ]


def model_rules() -> dict[str, list[dict[str, str]]]:
    """Rules per pydantic model name (the `$defs` key, i.e. the class name)."""
    return {
        "RLVRJobResourceSpec": _spec_rules(),
        "ClusterSpec": _cluster_rules(),
        "EnvValueFrom": [
            rule(
                f"{present('self.secret_key_ref')} != {present('self.config_map_key_ref')}",
                "set exactly one of secret_key_ref, config_map_key_ref",
            )
        ],
        "EnvFromSource": [
            rule(
                f"{present('self.secret_ref')} != {present('self.config_map_ref')}",
                "set exactly one of secret_ref, config_map_ref",
            )
        ],
        "ModelSpec": [
            rule(
                f"{present('self.path')} != {present('self.tiny')}",
                "model: set exactly one of path (a Hugging Face checkpoint) or tiny",
            )
        ],
        "RolloutSpec": [
            rule(
                "self.replicas != 0 || size(self.endpoints) > 0",
                "rollout: replicas is 0 and no endpoints are given; nothing would generate",
                ".replicas",
            )
        ],
        "SamplingParams": [
            rule(
                f"!({present('self.dual_temperature')} && {present('self.temperature')})",
                "temperature must be left unset when dual_temperature is given",
                ".temperature",
            )
        ],
        "ParallelConfig": [
            rule(
                f"!{present('self.virtual_pipeline')} || self.pipeline_parallel >= 2",
                "virtual_pipeline needs pipeline_parallel >= 2",
                ".virtual_pipeline",
            ),
            rule(
                "!self.sequence_parallel || self.tensor_parallel >= 2",
                "sequence_parallel needs tensor_parallel >= 2",
                ".sequence_parallel",
            ),
        ],
        "OptimizerSpec": [
            rule("self.min_lr <= self.lr", "min_lr must not exceed lr", ".min_lr"),
            rule(
                f"self.decay_style == 'constant' || {present('self.decay_steps')}",
                "decay_steps is required for decay_style cosine or linear",
                ".decay_steps",
            ),
            rule(
                f"!{present('self.decay_steps')} || self.decay_steps > self.warmup_steps",
                "decay_steps must exceed warmup_steps",
                ".decay_steps",
            ),
        ],
        "ArithmeticSpec": [rule("self.min_ops <= self.max_ops", "min_ops must not exceed max_ops", ".min_ops")],
        "DatasetSpec": [
            rule(
                f"{present('self.path')} != {present('self.arithmetic')}",
                "'dataset ' + self.name + ': set exactly one of path or arithmetic'",
            ),
            rule(
                f"!{present('self.arithmetic')} || {present('self.count')}",
                "'dataset ' + self.name + ': count is required with arithmetic'",
                ".count",
            ),
        ],
        "EvalSpec": [
            rule(
                "self.pass_k.all(k, k >= 1 && k <= self.samples_per_problem)",
                "eval.pass_k values must lie in [1, samples_per_problem]",
                ".pass_k",
            )
        ],
        "ColdStartSpec": [
            rule(
                f"!self.enabled || {present('self.dataset')}",
                "cold_start.dataset is required when cold_start.enabled",
                ".dataset",
            )
        ],
        "ScheduleSpec": [
            rule(
                "self.train_batch_size % self.mini_batch_size == 0",
                "schedule.mini_batch_size must divide schedule.train_batch_size",
                ".mini_batch_size",
            ),
            rule(
                "self.mode != 'one_step_off_policy' || self.max_staleness >= 1",
                "schedule.max_staleness must be >= 1 with mode one_step_off_policy",
                ".max_staleness",
            ),
        ],
        # Guarded by `self.name == 'clip_cov'` where the objective union is built.
        "ClipCovConfig": [
            rule(
                f"{or_default('self.cov_lower', ClipCovConfig, 'cov_lower')} < "
                f"{or_default('self.cov_upper', ClipCovConfig, 'cov_upper')}",
                "cov_lower must be < cov_upper",
                ".cov_lower",
            )
        ],
    }


# The API server estimates the worst-case cost of every rule; a rule iterating an unbounded list is
# refused. These bounds are far above any real spec (pydantic itself sets none).
COST_BOUNDS: dict[tuple[str, str], dict[str, int]] = {("EvalSpec", "pass_k"): {"maxItems": 100_000}}


def root_rules() -> list[dict[str, str]]:
    """Rules on the whole object (only the root may read metadata.name)."""
    return [
        rule(
            f"size(self.metadata.name) <= {MAX_NAME_LENGTH} && "
            "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
            f"metadata.name must be a DNS-1035 label of at most {MAX_NAME_LENGTH} characters (its RayJob "
            "<name>-r<attempt> must fit KubeRay's 47)",
        ),
        rule(
            f"!{present('self.spec.name')} || self.spec.name == self.metadata.name",
            "spec.name must equal metadata.name (or be left out)",
        ),
    ]
