"""`forkrl analyze` end to end on a saved tiny model: the JSON it writes equals an independent computation
(torch.distributions over the model's own logits), malformed rows are counted and skipped, the PNGs exist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from forkrl.rollout.tiny_model import TinyModelSpec, save_tiny_model
from forkrl.trainer.cli import main

RESPONSES = [
    {"prompt": "12+7*3=", "response": "12+21=33 so \\boxed{33}"},
    {"prompt": "9*9-1=", "response": "81-1=80"},
    {"prompt_ids": [5, 6, 7], "response_ids": [8, 9, 10, 11]},
]
MALFORMED = ["not json", json.dumps({"prompt": "1+1="}), json.dumps({"prompt_ids": [1], "response_ids": [-3]})]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("analyze")
    base = save_tiny_model(root / "base", TinyModelSpec(seed=0))
    other = save_tiny_model(root / "other", TinyModelSpec(seed=1))
    lines = [json.dumps(RESPONSES[0]), MALFORMED[0], json.dumps(RESPONSES[1]), MALFORMED[1], "",
             json.dumps(RESPONSES[2]), MALFORMED[2]]
    responses = root / "responses.jsonl"
    responses.write_text("\n".join(lines) + "\n")
    return base, other, responses


def independent_entropies(model_dir: Path, temperature: float) -> list[float]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    out = []
    for row in RESPONSES:
        if "prompt" in row:
            prompt = tokenizer(row["prompt"], add_special_tokens=False).input_ids
            response = tokenizer(row["response"], add_special_tokens=False).input_ids
        else:
            prompt, response = row["prompt_ids"], row["response_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + response])).logits[0]
        for position in range(len(prompt) - 1, len(prompt) + len(response) - 1):
            out.append(float(torch.distributions.Categorical(logits=logits[position] / temperature).entropy()))
    return out


def test_entropy_summary_equals_an_independent_computation(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    base, _, responses = setup
    assert main(["analyze", "entropy", "--model", str(base), "--responses", str(responses), "--out", str(tmp_path),
                 "--temperature", "0.7"]) == 0
    result = json.loads((tmp_path / "entropy.json").read_text())
    expected = independent_entropies(base, 0.7)
    assert result["tokens"] == len(expected)
    assert result["mean"] == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    assert result["share_below_0.01"] == sum(value < 1e-2 for value in expected) / len(expected)
    assert result["max"] == pytest.approx(max(expected), rel=1e-5)
    assert result["responses_file"]["malformed_rows"] == 3 and len(result["responses_file"]["first_errors"]) == 3
    assert (tmp_path / "entropy.png").stat().st_size > 10_000


def test_tokens_and_overlap(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    base, other, responses = setup
    assert main(["analyze", "tokens", "--model", str(base), "--responses", str(responses), "--out", str(tmp_path),
                 "--top", "5"]) == 0
    tokens = json.loads((tmp_path / "tokens.json").read_text())
    # Each response contributes ceil(0.2 * length) positions to each table.
    lengths = [22, 7, 4]
    assert sum(row["count"] for row in tokens["highest_entropy"]) <= sum(-(-n // 5) for n in lengths)
    assert all(isinstance(row["token"], str) for row in tokens["lowest_entropy"])

    assert main(["analyze", "overlap", "--base", str(base), "--model", str(base), "--model", str(other),
                 "--responses", str(responses), "--out", str(tmp_path)]) == 0
    overlap = json.loads((tmp_path / "overlap.json").read_text())["checkpoints"]
    itself = overlap[str(base)]
    assert itself["responses"] == 3 and itself["top_position_overlap"] == 1.0
    assert itself["high_entropy_tokens"]["change"] == 0.0 and itself["low_entropy_tokens"]["change"] == 0.0
    assert 0.0 <= overlap[str(other)]["top_position_overlap"] <= 1.0
    assert (tmp_path / "tokens.png").is_file() and (tmp_path / "overlap.png").is_file()


def test_a_missing_responses_file_is_named(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    base, _, _ = setup
    with pytest.raises(SystemExit, match=r"--responses: .*missing\.jsonl is not a file"):
        main(["analyze", "entropy", "--model", str(base), "--responses", str(tmp_path / "missing.jsonl"),
              "--out", str(tmp_path)])


def test_generate_from_a_spec_data_set_then_analyse(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from forkrl.trainer.data.arithmetic import arithmetic_rows
    from forkrl.trainer.spec import load_spec

    base, _, _ = setup
    example = Path(__file__).resolve().parents[3] / "examples" / "local-arith.yaml"
    responses = tmp_path / "responses.jsonl"
    assert main(["analyze", "generate", "--model", str(base), "--spec", str(example), "--dataset", "arith-heldout",
                 "--limit", "3", "--samples", "2", "--max-new-tokens", "6", "--out", str(responses)]) == 0
    rows = [json.loads(line) for line in responses.read_text().splitlines()]
    (heldout,) = load_spec(example).eval.datasets
    expected = [row.prompt for row in arithmetic_rows(heldout.count, heldout.seed, heldout.arithmetic)[:3]]
    tokenizer = AutoTokenizer.from_pretrained(base)
    assert 1 <= len(rows) <= 6 and {row["prompt"] for row in rows} <= set(expected)
    assert all(row["prompt_ids"] == tokenizer(row["prompt"]).input_ids and 1 <= len(row["response_ids"]) <= 6
               for row in rows)
    assert main(["analyze", "entropy", "--model", str(base), "--responses", str(responses),
                 "--out", str(tmp_path / "a")]) == 0
    summary = json.loads((tmp_path / "a" / "entropy.json").read_text())
    assert summary["tokens"] == sum(len(row["response_ids"]) for row in rows)
    assert summary["responses_file"]["malformed_rows"] == 0
    with pytest.raises(SystemExit, match="'nope' is not a data set"):
        main(["analyze", "generate", "--model", str(base), "--spec", str(example), "--dataset", "nope",
              "--out", str(responses)])


def test_generate_through_a_running_rollout_service_equals_the_local_engine(setup: tuple[Path, Path, Path],
                                                                           tmp_path: Path) -> None:
    """The same prompts and seeds sampled by a real replica process give the same responses as in-process."""
    from tests.rollout.helpers import start_server

    base, _, _ = setup
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("3+4*2=", "8-5+1=", "7*7=")))
    common = ["--model", str(base), "--prompts", str(prompts), "--samples", "2", "--max-new-tokens", "5",
              "--seed", "11"]
    local, served = tmp_path / "local.jsonl", tmp_path / "served.jsonl"
    assert main(["analyze", "generate", *common, "--out", str(local)]) == 0
    server = start_server(base, tmp_path)
    try:
        assert main(["analyze", "generate", *common, "--endpoint", server.url, "--out", str(served)]) == 0
    finally:
        server.stop()
    rows = [json.loads(line) for line in served.read_text().splitlines()]
    assert len(rows) >= 3 and {row["prompt"] for row in rows} <= {"3+4*2=", "8-5+1=", "7*7="}
    assert served.read_text() == local.read_text()


def test_dual_temperature_grid_is_paired_and_reproducible(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from forkrl.trainer.evaluation import score_dataset

    # The cells' avg@k and interval (per-problem accuracies 1, 0, 0.5, 0.5).
    scores = score_dataset("cell", [[True, True], [False, False], [True, False], [False, True]])
    half = (scores.ci95[1] - scores.ci95[0]) / 2
    assert scores.avg_at_k == 0.5 and half == pytest.approx(1.96 * (1 / 6) ** 0.5 / 2)
    base, _, _ = setup
    example = Path(__file__).resolve().parents[3] / "examples" / "local-arith.yaml"
    results = []
    for run in ("a", "b"):
        assert main(["analyze", "dual-temperature", "--model", str(base), "--spec", str(example), "--dataset",
                     "arith-heldout", "--t-high", "0.5,1.5", "--t-low", "1.0", "--samples", "2", "--limit", "3",
                     "--max-new-tokens", "6", "--out", str(tmp_path / run)]) == 0
        results.append(json.loads((tmp_path / run / "dual_temperature.json").read_text()))
    cells = results[0]["cells"]
    assert [(c["t_high"], c["t_low"], c["samples"]) for c in cells] == [(0.5, 1.0, 6), (1.5, 1.0, 6)]
    assert all(0.0 <= c["avg_at_k"] <= 1.0 for c in cells)
    # Per-problem accuracies (3 problems, 2 samples each) average to the cell's avg@k.
    for cell in cells:
        assert len(cell["per_problem"]) == 3 and all(p in (0.0, 0.5, 1.0) for p in cell["per_problem"])
        assert sum(cell["per_problem"]) / 3 == pytest.approx(cell["avg_at_k"])
    assert results[0] == results[1]  # same seeds per cell: a rerun is identical
    assert (tmp_path / "a" / "dual_temperature.png").is_file()
    with pytest.raises(SystemExit, match="--t-high: temperatures must be > 0"):
        main(["analyze", "dual-temperature", "--model", str(base), "--spec", str(example), "--dataset",
              "arith-heldout", "--t-high", "0,1", "--out", str(tmp_path / "c")])
