"""Everything a run prepares before its first step: data sets, the starting model, pre-flight checks."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from forkrl.trainer.data.arithmetic import arithmetic_rows
from forkrl.trainer.data.readers import read_rows
from forkrl.trainer.data.schema import PromptRow
from forkrl.trainer.spec import RLVRJobSpec
from forkrl.trainer.spec.run import DatasetSpec


class PreflightError(RuntimeError):
    """A problem found before training starts (unwritable or full checkpoint directory, bad data)."""


def load_dataset(dataset: DatasetSpec, exclude: set[str] | None = None, log=print) -> list[PromptRow]:
    """Rows of one data set; malformed rows are reported and skipped."""
    if dataset.arithmetic is not None:
        assert dataset.count is not None
        return arithmetic_rows(dataset.count, dataset.seed, dataset.arithmetic, exclude=exclude)
    assert dataset.path is not None
    rows, stats = read_rows(dataset.path, dataset.layout)
    log(f"data {dataset.name}: {stats.summary()}")
    for example in stats.examples:
        log(f"  malformed: {example}")
    return rows[: dataset.count] if dataset.count else rows


def load_datasets(spec: RLVRJobSpec, log=print) -> tuple[list[PromptRow], dict[str, list[PromptRow]]]:
    """(training rows, {eval name: rows}); generated training problems never repeat held-out ones."""
    evaluation = {d.name: load_dataset(d, log=log) for d in spec.eval.datasets}
    held_out = {row.prompt.rstrip("=") for rows in evaluation.values() for row in rows}
    train = [row for d in spec.data.train for row in load_dataset(d, exclude=held_out, log=log)]
    if not train:
        raise PreflightError("no training rows were loaded: check data.train")
    return train, evaluation


def count_parameters(model_dir: str | Path) -> int:
    """Parameters in a Hugging Face safetensors checkpoint directory (read from the headers only)."""
    from safetensors import safe_open

    total = 0
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            total += sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())  # noqa: SIM118
    return total


def estimated_checkpoint_bytes(num_parameters: int) -> int:
    """fp32 weights + Adam moments + the main params copy: about 16 bytes per parameter, plus slack."""
    return 16 * num_parameters + 64 * 2**20


def preflight_checkpoint_dir(path: Path, needed_bytes: int) -> None:
    """Fail before training when checkpoints could not be written (permissions or free space)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".forkrl-write-probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise PreflightError(f"checkpoint directory {path} is not writable: {err.strerror or err}") from None
    free = shutil.disk_usage(path).free
    if free < needed_bytes:
        raise PreflightError(
            f"checkpoint directory {path} has {free / 2**20:.0f} MiB free but one checkpoint needs about "
            f"{needed_bytes / 2**20:.0f} MiB: free space or point checkpoint.dir elsewhere"
        )


def starting_model(spec: RLVRJobSpec, run_dir: Path) -> tuple[Any, Any, Path | None]:
    """(model or None, tokenizer, path): a tiny spec is built (and saved later); a path is loaded lazily."""
    if spec.model.tiny is not None:
        from forkrl.rollout.tiny_model import build_tiny_model

        model, tokenizer = build_tiny_model(spec.model.tiny)
        return model, tokenizer, None
    from transformers import AutoTokenizer

    assert spec.model.path is not None
    return None, AutoTokenizer.from_pretrained(spec.model.path), Path(spec.model.path)
