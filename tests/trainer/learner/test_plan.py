"""`forkrl plan`: parameter counts (closed form vs transformers vs a meta-device megatron build), memory
arithmetic, the 32B recommendation and the shipped configs."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from forkrl.trainer.learner.arch import ModelArch
from forkrl.trainer.learner.plan import (
    GIB,
    Cluster,
    Workload,
    activation_bytes_per_layer,
    estimate,
    main,
    mask_bytes,
    plan,
    stage_param_counts,
)
from forkrl.trainer.learner.presets import preset
from forkrl.trainer.spec import load_spec
from tests.trainer.learner.tiny import tiny_config

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "learner"
H100 = {"gpus_per_node": 8, "gpu_memory_gib": 80.0}


@pytest.mark.parametrize(("family", "tie"), [("qwen2", False), ("qwen3", False), ("llama", True)])
def test_closed_form_count_matches_transformers(family: str, tie: bool) -> None:
    config = tiny_config(family, layers=3, tie=tie)
    model = transformers.AutoModelForCausalLM.from_config(config)
    expected = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    arch = ModelArch.from_hf(config)
    assert arch.num_parameters() == expected
    assert sum(stage_param_counts(arch, tp=1, pp=1)) == expected


def test_stage_counts_split_the_model() -> None:
    arch = ModelArch.from_hf(preset("qwen2.5-7b"))
    per_stage = stage_param_counts(arch, tp=1, pp=4)
    assert sum(per_stage) == arch.num_parameters()
    h = arch.hidden_size
    embedding = arch.vocab_size * h
    assert per_stage[0] - per_stage[1] == embedding
    assert per_stage[3] - per_stage[1] == embedding + h  # output layer + final norm


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [
        ("qwen2.5-32b", 32.5e9, 33.0e9),
        ("qwen2.5-7b", 7.5e9, 7.7e9),
        ("qwen3-8b", 8.1e9, 8.3e9),
        ("qwen2.5-0.5b", 0.48e9, 0.50e9),
    ],
)
def test_preset_sizes_match_published_sizes(name: str, low: float, high: float) -> None:
    assert low < ModelArch.from_hf(preset(name)).num_parameters() < high


def test_meta_device_build_of_32b_matches_closed_form() -> None:
    """One TP rank of the recommended Qwen2.5-32B layout (TP=4, one stage), built on the meta device."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "forkrl.trainer.learner.plan",
            "--model",
            "qwen2.5-32b",
            "--nodes",
            "4",
            "--tokens",
            "22528",
            "--json",
            *[f"--{k.replace('_', '-')}={v}" for k, v in H100.items()],
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=240,
    )
    result = json.loads(out.stdout)
    rec = result["recommended"]
    # Its layers keep 6h/SP + 5f/TP and more per token for backward: without recomputation no layout fits 68 GiB.
    assert (rec["tp"], rec["pp"], rec["dp"], rec["recompute"]) == (4, 1, 8, "full")
    check = result["meta_check"]
    assert check["meta_build"] == check["closed_form"]
    # Hand count: 64 layers of TP-sharded weights / 4 + replicated norms, embedding and output layer / 4, final norm.
    h, f, d = 5120, 27648, 128
    sharded = (40 + 16) * d * h + 40 * d * h + 3 * f * h + (40 + 16) * d
    assert check["meta_build"] == [64 * (sharded // 4 + 2 * h) + 2 * (152064 * h // 4) + h]


def test_memory_terms_by_hand() -> None:
    arch = ModelArch.from_hf(preset("qwen2.5-7b"))
    cluster = Cluster(nodes=1, **H100)
    work = Workload(tokens=4096, micro_batch_size=1, micro_batches=8, sequence_parallel=True)
    dp2 = estimate(arch, 4, 1, 2, "none", cluster, work)
    dp1 = estimate(arch, 4, 1, 1, "none", cluster, work)
    count = stage_param_counts(arch, 4, 1)[0]
    assert dp2.params_per_rank == count
    assert dp2.param_gib == pytest.approx(count * 2 / GIB)
    assert dp2.grad_gib == pytest.approx(count * 4 / GIB)
    assert dp2.optimizer_gib == pytest.approx(count * 12 / 2 / GIB)
    assert dp1.optimizer_gib == pytest.approx(2 * dp2.optimizer_gib)
    # The unfused attention keeps bf16 softmax probabilities [heads / TP, s, s], a bool causal mask [s, s] and
    # v made contiguous [s, kv heads / TP, d] per layer; SDPA's kernels an fp32 log-sum-exp [heads / TP, s].
    unfused = dataclasses.replace(work, attention="unfused")
    none = activation_bytes_per_layer(arch, 4, unfused, "none")
    selective = activation_bytes_per_layer(arch, 4, unfused, "selective")
    assert none - selective == pytest.approx((2 * 28 / 4 + 1) * 4096**2 + 2 * 4096 * 4 * 128 / 4)
    # Per token: the two norms' 3 x h / SP (+ rstd), qkv, rotated q and k, context and SwiGLU's 5 x f over TP;
    # rotary cos/sin per position.
    h, f, a, g, d = 3584, 18944, 28, 4, 128
    per_token = (6 * h + 2) / 4 + ((a + 2 * g) * d + 2 * a * d + g * d + 5 * f) / 4
    assert selective == pytest.approx(2 * (4096 * per_token + 4 * d * 4096))
    assert activation_bytes_per_layer(arch, 4, work, "none") - selective == pytest.approx(4 * 1 * (28 / 4) * 4096)
    assert activation_bytes_per_layer(arch, 4, work, "full") == 2 * 4096 * 3584 / 4
    assert activation_bytes_per_layer(arch, 4, work, "selective") == selective
    # The fused head holds one 1024-token chunk of bf16 logits and two fp32 buffers of its size ...
    assert dp2.logits_gib == pytest.approx(1024 * 152064 / 4 * 10 / GIB)
    # ... the logits head the whole micro-batch's bf16 logits and an fp32 workspace.
    logits_head = estimate(arch, 4, 1, 2, "none", cluster, dataclasses.replace(work, loss_head="logits"))
    assert logits_head.logits_gib == pytest.approx(4096 * 152064 / 4 * 6 / GIB)
    assert logits_head.total_gib - dp2.total_gib == pytest.approx(logits_head.logits_gib - dp2.logits_gib)


def test_recommendation_fits_and_is_fastest_fitting() -> None:
    arch = ModelArch.from_hf(preset("qwen2.5-32b"))
    rows, best = plan(arch, Cluster(nodes=4, **H100), Workload(tokens=22528))
    assert best is not None and best.fits
    assert all(best.relative_step_time <= r.relative_step_time for r in rows if r.fits)
    assert not estimate(arch, 8, 1, 4, "selective", Cluster(nodes=4, **H100), Workload(tokens=22528)).fits


@pytest.mark.parametrize(
    ("file", "model", "nodes"),
    [
        ("qwen2.5-32b-forking.yaml", "qwen2.5-32b", 4),
        ("qwen2.5-7b-forking.yaml", "qwen2.5-7b", 1),
        ("qwen3-8b-forking.yaml", "qwen3-8b", 1),
    ],
)
def test_shipped_configs_use_the_planned_layout(file: str, model: str, nodes: int) -> None:
    spec = load_spec(EXAMPLES / file)
    learner = spec.learner
    arch = ModelArch.from_hf(preset(model))
    learner.parallel.validate_for(arch.num_layers, arch.num_heads, arch.num_kv_heads, arch.vocab_size)
    dp = learner.parallel.data_parallel_size(spec.resources.learner_ranks)
    assert spec.resources.learner_ranks == nodes * H100["gpus_per_node"]
    tokens = spec.model.max_prompt_tokens + spec.model.max_response_tokens
    assert learner.micro_batch.max_tokens == tokens
    _, best = plan(arch, Cluster(nodes=nodes, **H100), Workload(tokens=tokens))
    assert best is not None
    assert (learner.parallel.tensor_parallel, learner.parallel.pipeline_parallel, dp) == (best.tp, best.pp, best.dp)
    assert learner.activation_recompute == best.recompute


def test_main_prints_recommendation(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", "qwen2.5-7b", "--nodes", "1", "--no-meta-check"]) == 0
    out = capsys.readouterr().out
    assert "recommended: tensor_parallel=" in out


def test_main_rejects_unknown_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", "gpt-17", "--no-meta-check"]) == 2
    assert "unknown model 'gpt-17'" in capsys.readouterr().err


def test_activation_estimate_matches_what_the_layers_keep_for_backward() -> None:
    """The plan's per-layer activation bytes against a measured forward of the learner's own megatron layers
    (fp32 on CPU, TP=1): every storage autograd saves while a layer runs (activation_probe.py). Both attention
    kernels, and batch x sequence shapes that separate per-token, per-position and quadratic terms."""
    from tests.trainer.learner.activation_probe import HF_CONFIG

    out = subprocess.run([sys.executable, "-m", "tests.trainer.learner.activation_probe"], capture_output=True,
                         text=True, check=True, timeout=300, cwd=Path(__file__).resolve().parents[3])
    result = json.loads(out.stdout)
    arch = ModelArch.from_hf(transformers.Qwen2Config(**HF_CONFIG).to_dict())
    shapes = {(c["attention"], c["batch"], c["seq"]) for c in result["cases"]}
    assert shapes >= {("sdpa", 1, 512), ("sdpa", 2, 1024), ("unfused", 1, 512), ("unfused", 1, 1024)}
    for case in result["cases"]:
        work = Workload(tokens=case["batch"] * case["seq"], micro_batch_size=case["batch"],
                        attention=case["attention"], sequence_parallel=False)
        planned = activation_bytes_per_layer(arch, 1, work, "none", element_bytes=4)
        # The bound is 15%; the count is exact today, so a layer change shows up here at 5%.
        assert planned == pytest.approx(case["bytes_per_layer"], rel=0.05), case


def test_packed_rows_cost_their_document_ids_and_a_block_mask_not_an_s_by_s_mask() -> None:
    """SDPA: int32 document ids plus FlexAttention's block tables, measured on a real BlockMask; unfused:
    the dense bool mask megatron's module needs."""
    from forkrl.trainer.learner.attention import document_block_mask

    work = Workload(tokens=4096, micro_batch_size=1)
    ids = torch.zeros(1, 4096, dtype=torch.int32)
    ids[0, 1000:] = 1
    block_mask = document_block_mask(ids)
    tables = sum(t.numel() * t.element_size() for t in block_mask.as_tuple() if isinstance(t, torch.Tensor))
    assert mask_bytes(work) == pytest.approx(ids.numel() * ids.element_size() + tables, rel=0.01)
    assert mask_bytes(work) < 4096 * 4096 / 100  # well under one bool per pair of positions
    assert mask_bytes(dataclasses.replace(work, attention="unfused")) == 4 * 4096 + 4096 * 4096
