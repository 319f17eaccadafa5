"""Shared helpers of the rollout tests: tiny models, a real server process, chi-square p-values."""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

from forkrl.rollout.tiny_model import TinyModelSpec, build_tiny_model, save_tiny_model

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def one_torch_thread():
    """Tiny matrices on 2 shared cores: one intra-op thread is ~100x faster than two under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.cache
def _tiny_built(seed: int, dtype: str):
    return build_tiny_model(TinyModelSpec(seed=seed, dtype=dtype))


def tiny(seed: int = 0, dtype: str = "float32"):
    """(model, tokenizer): a private copy of a model built once per (seed, dtype). Private because an engine
    changes its model (its attention implementation, rollout/hf_attention.py), and a test's reference
    forward or `model.generate` must stay on transformers' own code."""
    model, tokenizer = _tiny_built(seed, dtype)
    return copy.deepcopy(model), tokenizer


def save_model(path: Path, seed: int = 0, dtype: str = "float32") -> Path:
    return save_tiny_model(path, TinyModelSpec(seed=seed, dtype=dtype))


def reference_logprobs(model, prompt: list[int], response: list[int], temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T) at `response` from one unpadded forward pass: [len(response)] float64."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    steps = logits[len(prompt) - 1 : -1] / temperature
    return steps.log_softmax(-1).gather(1, torch.tensor(response).unsqueeze(1)).squeeze(1)


def next_token_logits(model, prompt: list[int]) -> torch.Tensor:
    """Raw logits of the token after `prompt`: [vocab] float64."""
    with torch.no_grad():
        return model(torch.tensor([prompt])).logits[0, -1].double()


def chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> float:
    """Pearson chi-square goodness of fit; categories with expected count < `min_expected` are pooled."""
    counts = counts.double()
    expected = probs.double() * counts.sum()
    small = expected < min_expected
    observed = torch.cat([counts[~small], counts[small].sum().reshape(1)])
    expect = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    if expect[-1] < min_expected:  # pooled bin still too small: merge it into the smallest kept bin
        smallest = int(expect[:-1].argmin())
        observed[smallest] += observed[-1]
        expect[smallest] += expect[-1]
        observed, expect = observed[:-1], expect[:-1]
    statistic = ((observed - expect) ** 2 / expect).sum()
    dof = observed.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0), statistic / 2.0))


@dataclass
class ServerProcess:
    process: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def start_server(model_dir: Path, workdir: Path, *args: str, port: int = 0, timeout_s: float = 120.0,
                 env: dict[str, str] | None = None) -> ServerProcess:
    """Runs `python -m forkrl.rollout --engine hf` as a real process and waits until /healthz answers;
    `env` adds to its environment."""
    port_file = workdir / f"port-{time.monotonic_ns()}"
    log = workdir / f"server-{time.monotonic_ns()}.log"
    command = [sys.executable, "-m", "forkrl.rollout", "--engine", "hf", "--model", str(model_dir)]
    command += ["--port", str(port), "--port-file", str(port_file), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if port_file.exists():
            bound = int(port_file.read_text())
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{bound}/healthz", timeout=2).status_code == 200:
                    return ServerProcess(process, bound, log)
        time.sleep(0.1)
    process.kill()
    raise TimeoutError(f"server did not start in {timeout_s}s:\n{log.read_text()[-3000:]}")
