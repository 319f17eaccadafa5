"""Pydantic configs of the policy objectives: one model per objective, a union keyed by `name`.

Defaults follow ../shared/spec/objectives.md section 8.3 (DAPO / 80-20 / Archer code parity).
Every field is documented and range-checked so a bad value fails naming the field.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
KLEstimator = Literal["k1", "abs", "k2", "k3", "k3+"]


class EntropyAdvantageConfig(BaseModel):
    """Entropy-based advantage shaping (Cheng et al. 2025): A' = A + min(alpha * H, |A| / kappa)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alpha: float = Field(0.4, gt=0.0, description="Scale of the detached token entropy added to the advantage.")
    kappa: float = Field(2.0, gt=1.0, description="The bonus is capped at |A| / kappa, so it never flips the sign.")


class _ObjectiveBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    loss_agg: AggMode = Field(
        "token-mean",
        description="How per-token losses are aggregated: token-mean (DAPO), seq-mean-token-mean (GRPO/Archer), "
        "seq-mean-token-sum, seq-mean-token-sum-norm (Dr.GRPO; divides each sequence's token sum by a fixed L, see "
        "token_sum_norm_length).",
    )
    token_sum_norm_length: int | None = Field(
        None, ge=1, le=1_000_000, description="L of seq-mean-token-sum-norm (Dr.GRPO's constant, verl "
        "`loss_scale_factor`). None = the run's maximum response length, model.max_response_tokens (verl's "
        "default). Fixed for the whole run, so the loss scale does not follow each mini-batch's longest response."
    )
    token_mean_scope: Literal["global", "micro_batch"] = Field(
        "global",
        description="`global`: normalise by the token/sequence count of the whole mini-batch across micro-batches "
        "and data-parallel ranks (exact). `micro_batch`: mean per micro-batch, then averaged (verl-legacy parity).",
    )
    log_ratio_clamp: float = Field(
        20.0, gt=0.0, description="log pi_theta - log pi_old is clamped to +-this before exp (verl uses 20)."
    )
    entropy_coef: float = Field(
        0.0, ge=0.0, description="Entropy bonus coefficient (0 = off, as in every seed recipe). >0 needs "
        "entropies with gradient."
    )
    entropy_advantage: EntropyAdvantageConfig | None = Field(
        None, description="Optional entropy advantage shaping applied before the objective (None = off)."
    )
    tis_cap: float | None = Field(
        None, gt=0.0, description="Truncated importance sampling for train-inference mismatch: each token's loss is "
        "weighted by min(pi_old / pi_rollout, tis_cap) (detached). None = off; needs rollout log-probs."
    )
    metrics_high_entropy_rho: float = Field(
        0.2, gt=0.0, le=1.0, description="For metrics only: fraction of highest-entropy tokens reported as the "
        "'high' token type by objectives that have no token split of their own."
    )

    @property
    def needs_reference(self) -> bool:
        """Whether reference-model log-probs must be supplied (KL terms)."""
        return False

    @property
    def needs_entropy(self) -> bool:
        """Whether per-token entropies must be supplied to compute the loss itself."""
        return self.entropy_coef > 0 or self.entropy_advantage is not None


class _ClippedSurrogateBase(_ObjectiveBase):
    clip_eps_low: float = Field(0.2, ge=0.0, lt=1.0, description="Lower clip: ratio is clipped at 1 - clip_eps_low.")
    clip_eps_high: float = Field(0.28, ge=0.0, description="Upper clip (DAPO clip-higher): 1 + clip_eps_high.")
    dual_clip_c: float | None = Field(
        10.0, gt=1.0, description="Dual-clip bound c for negative advantages (objective >= c * A). None disables; "
        "verl default is 3, every seed script uses 10."
    )


class DapoConfig(_ClippedSurrogateBase):
    """DAPO: clip-higher token-level PPO surrogate, no KL."""

    name: Literal["dapo"] = Field("dapo", description="Objective selector.")


class ForkingConfig(_ClippedSurrogateBase):
    """80/20 forking tokens: the DAPO loss on only the top-rho highest-entropy response tokens."""

    name: Literal["forking"] = Field("forking", description="Objective selector.")
    rho: float = Field(0.2, gt=0.0, le=1.0, description="Fraction of response tokens that receive policy gradient.")
    select: Literal["top", "bottom"] = Field(
        "top",
        description="`top`: highest-entropy tokens (paper). `bottom`: lowest (the bottom-80% ablation; rho=0.8).",
    )
    scope: Literal["micro_batch", "mini_batch_global"] = Field(
        "micro_batch",
        description="Where the top-rho threshold is taken: per micro-batch per rank (released code) or exactly over "
        "the whole mini-batch across data-parallel ranks and micro-batches (paper Eq. 6).",
    )
    tie_rule: Literal["exact_k", "geq_tau"] = Field(
        "exact_k", description="`exact_k`: exactly k tokens, ties broken by position. `geq_tau`: every H >= tau."
    )
    entropy_source: Literal["current", "old"] = Field(
        "current", description="Entropy of the current policy in the training forward (paper/code) or from the "
        "old-log-prob pass (lets a global threshold be computed before the pipeline schedule)."
    )

    @property
    def needs_entropy(self) -> bool:
        return True


class ArcherConfig(_ObjectiveBase):
    """Archer dual-token constraints: per-response entropy quantile splits knowledge vs reasoning tokens."""

    name: Literal["archer"] = Field("archer", description="Objective selector.")
    loss_agg: AggMode = Field("seq-mean-token-mean", description="Aggregation (Eq. 5 / code parity default).")
    rho: float = Field(0.8, gt=0.0, lt=1.0, description="Per-response entropy quantile (linear interpolation).")
    tie_rule: Literal["gt", "geq"] = Field(
        "gt", description="A token is reasoning if H > tau (`gt`, code) or H >= tau (`geq`, paper)."
    )
    eps_knowledge_low: float = Field(0.2, ge=0.0, lt=1.0, description="Lower clip of knowledge (low-entropy) tokens.")
    eps_knowledge_high: float = Field(0.2, ge=0.0, description="Upper clip of knowledge tokens.")
    eps_reasoning_low: float = Field(0.5, ge=0.0, lt=1.0, description="Lower clip of reasoning (high-entropy) tokens.")
    eps_reasoning_high: float = Field(0.5, ge=0.0, description="Upper clip of reasoning tokens.")
    beta_knowledge: float = Field(1e-3, ge=0.0, description="KL coefficient on knowledge tokens.")
    beta_reasoning: float = Field(0.0, ge=0.0, description="KL coefficient on reasoning tokens.")
    kl_estimator: KLEstimator = Field("k3", description="KL estimator (k3 = verl low_var_kl).")
    kl_norm: Literal["per_type", "paper"] = Field(
        "per_type", description="`per_type`: each type's KL averaged over its own tokens (code). `paper`: "
        "beta_t * KL_t averaged over all tokens (Eq. 5)."
    )
    dual_clip_c: float | None = Field(
        10.0, gt=1.0, description="Dual-clip bound for negative advantages; None disables."
    )

    @property
    def needs_reference(self) -> bool:
        return self.beta_knowledge > 0 or self.beta_reasoning > 0

    @property
    def needs_entropy(self) -> bool:
        return True


class ClipCovConfig(_ObjectiveBase):
    """Clip-Cov: zero the loss of a random few high-covariance tokens (Cui et al. 2025)."""

    name: Literal["clip_cov"] = Field("clip_cov", description="Objective selector.")
    clip_eps_low: float = Field(1.0, ge=0.0, le=1.0, description="Standard clip low (PRIME scripts: 1, i.e. off).")
    clip_eps_high: float = Field(1.0, ge=0.0, description="Standard clip high (PRIME scripts: 1).")
    clip_ratio: float = Field(2e-4, gt=0.0, le=1.0, description="Fraction of tokens whose loss is zeroed.")
    cov_lower: float = Field(1.0, description="Candidates have covariance strictly above this.")
    cov_upper: float = Field(5.0, description="Candidates have covariance strictly below this.")
    seed: int = Field(0, ge=0, description="Seed of the random candidate choice (deterministic per call).")

    @model_validator(mode="after")
    def _bounds_ordered(self) -> ClipCovConfig:
        if self.cov_lower >= self.cov_upper:
            raise ValueError(f"cov_lower ({self.cov_lower}) must be < cov_upper ({self.cov_upper})")
        return self


class KlCovConfig(_ObjectiveBase):
    """KL-Cov: a |log r| penalty on the top covariance tokens, no PPO clipping (Cui et al. 2025)."""

    name: Literal["kl_cov"] = Field("kl_cov", description="Objective selector.")
    kl_cov_ratio: float = Field(2e-3, gt=0.0, le=1.0, description="Fraction of tokens penalised (a fraction, not %).")
    kl_coef: float = Field(1.0, ge=0.0, description="Coefficient of |log r| on the selected tokens.")


class GspoConfig(_ObjectiveBase):
    """GSPO: sequence-level geometric-mean ratio with a tight clip."""

    name: Literal["gspo"] = Field("gspo", description="Objective selector.")
    loss_agg: AggMode = Field("seq-mean-token-mean", description="Aggregation (paper default).")
    clip_eps_low: float = Field(3e-4, ge=0.0, lt=1.0, description="Lower clip of the sequence ratio.")
    clip_eps_high: float = Field(4e-4, ge=0.0, description="Upper clip of the sequence ratio.")
    max_log_ratio: float = Field(10.0, gt=0.0, description="log of the token-form sequence ratio is clamped <= this.")


class CispoConfig(_ObjectiveBase):
    """CISPO: clip the detached IS weight, every token keeps a REINFORCE gradient."""

    name: Literal["cispo"] = Field("cispo", description="Objective selector.")
    clip_eps_low: float = Field(10.0, ge=0.0, description="IS weight lower bound 1 - this (10 = no lower bound).")
    clip_eps_high: float = Field(0.2, ge=0.0, description="IS weight upper bound 1 + this.")


ObjectiveConfig = Annotated[
    DapoConfig | ForkingConfig | ArcherConfig | ClipCovConfig | KlCovConfig | GspoConfig | CispoConfig,
    Field(discriminator="name"),
]
"""Discriminated union of every objective config, keyed by `name`."""

_OBJECTIVE_ADAPTER: TypeAdapter[ObjectiveConfig] = TypeAdapter(ObjectiveConfig)


def parse_objective(data: dict) -> ObjectiveConfig:
    """Validate a dict (e.g. from YAML) into the objective config named by its `name` field."""
    return _OBJECTIVE_ADAPTER.validate_python(data)
