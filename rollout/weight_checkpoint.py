"""Weights as files: a checkpoint directory of `*.safetensors` read tensor by tensor, and the learner's
weights written as one `model.safetensors` (the file-based weight sync, exported models)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def iter_checkpoint_tensors(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) from every *.safetensors file of a checkpoint directory, in file then key order."""
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"path: {directory} is not a directory")
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"path: no *.safetensors files in {directory}")
    for file in files:
        with safe_open(file, framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                yield name, handle.get_tensor(name)


def _umask() -> int:
    """This process's umask, read without changing it (os.umask would, for a moment, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def plain_file_mode() -> int:
    """The mode `open(path, "w")` gives a new file in this process (0o666 less the umask)."""
    return 0o666 & ~_umask()


def make_files_readable(directory: str | Path) -> None:
    """Give every file of a model directory the mode a plainly written file gets (0644 under umask 022).

    Writers that save through a temporary file (safetensors 0.8's `save_file`, hence `save_pretrained`;
    `tempfile.mkstemp`) leave it 0600: a model written by one user, then mounted into a pod that runs as
    another (the operator's pods run as uid 1000) or served by another process user, could not be read.
    """
    mode = plain_file_mode()
    for path in Path(directory).iterdir():
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o777 != mode:
            os.chmod(path, mode)


def write_checkpoint(named_tensors: Iterable[tuple[str, torch.Tensor]], path: str | Path) -> Path:
    """Writes `model.safetensors` atomically (temp file + rename) into directory `path`."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in named_tensors}
    handle, temp_name = tempfile.mkstemp(dir=directory, suffix=".safetensors.tmp")
    os.close(handle)
    save_file(tensors, temp_name, metadata={"format": "pt"})
    # mkstemp makes the file 0600; a model directory is read by other processes, possibly as other
    # users (a rollout pod, a model mounted into a job), so it gets the mode a plainly written file would.
    os.chmod(temp_name, plain_file_mode())
    target = directory / "model.safetensors"
    os.replace(temp_name, target)
    return target
