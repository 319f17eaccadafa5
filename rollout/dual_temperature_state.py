"""Per-sample dual-temperature state for the vLLM logits processors (no vLLM import; torch only).

Both vLLM adapters (`vllm_logits_processor.py` for the V1 model runner, `vllm_logits_processor_v2.py`
for the V2 one) keep their samples here, so the counting below is written once.

Why a pool of rows keyed by sample, not per batch slot: vLLM recycles a batch slot as soon as a request
leaves it, and the V2 runner does not even say when that happens. A sample's row therefore lives from
its admission until the engine has read its count (`drain_high_temperature_counts`), whatever happens to
the slot; a preempted sample that comes back finds its row (threshold and counts) by its key.

Why counts are read for an emitted length, not as a running total: vLLM can run a request for a step
whose token it then throws away (async scheduling decodes one step past a stop token before it knows
about the stop; a preempted request loses its in-flight token and recomputes it on resume). Each row
therefore keeps a ring of the last `RING` output positions: the output index written there, the number
of high-temperature tokens among output indices up to and including it, and the threshold after it.
A step at output index k reads the entry of k - 1 (so a recomputed k starts again from the kept state)
and writes entry k; the count of a sample that emitted n tokens is the entry of n - 1, exact as long as
vLLM never runs more than `RING` - 1 positions past the emitted ones (it runs at most one or two).
An entry that is missing when read marks the row broken, and reading a broken row raises.

Row 0 is the identity row (t_high = t_low = 1, never read back): rows of requests without dual
temperature point at it, so a step divides them by exactly 1.0 and leaves them bit-identical, and
discarded positions (a prefill chunk that samples nothing) write their results there.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping

import torch

from forkrl.rollout.dual_temperature import DualTemperatureRows, dual_temperature_step
from forkrl.rollout.types import DualTemperatureParams

RING = 16
"""Output positions remembered per sample; vLLM runs at most a step or two past the emitted tokens."""
IDENTITY_ROW = 0

_PARAM_FIELDS = ("t_high", "t_low", "threshold", "rho", "quantile_lr")


class DualTemperatureState:
    """A pool of per-sample rows on one device; see the module docstring for the layout."""

    def __init__(self, device: torch.device | str, initial_rows: int = 64) -> None:
        self.device = torch.device(device)
        self._lock = threading.Lock()
        self._row_of_key: dict[str, int] = {}
        self._attached: dict[int, int] = {}  # row -> number of batch slots pointing at it
        self._orphans: set[int] = set()  # read rows still attached to a slot: freed on the last detach
        self._staged: list[tuple[int, DualTemperatureParams]] = []
        self._staged_next_index: dict[int, int] = {}
        self._rows = 0
        self._free: list[int] = []
        self._grow(max(2, initial_rows))
        _STATES.add(self)

    # Storage ---------------------------------------------------------------------------------------

    def _grow(self, rows: int) -> None:
        """Reallocates every column with `rows` rows, keeping the existing ones (pool full)."""
        old, self._rows = self._rows, rows

        def column(name: str, fill: float | int | bool, dtype: torch.dtype, width: int | None = None) -> None:
            shape = (rows,) if width is None else (rows, width)
            fresh = torch.full(shape, fill, dtype=dtype, device=self.device)
            if old:
                fresh[:old] = getattr(self, name)
            setattr(self, name, fresh)

        column("t_high", 1.0, torch.float32)
        column("t_low", 1.0, torch.float32)
        column("threshold", 0.0, torch.float32)
        column("rho", 0.0, torch.float32)
        column("quantile_lr", 0.0, torch.float32)
        column("running", False, torch.bool)
        column("ring_index", -1, torch.int64, RING)
        column("ring_high_count", 0, torch.int64, RING)
        column("ring_tau", 0.0, torch.float32, RING)
        column("next_index", 0, torch.int64)
        column("broken", 0, torch.int64)
        self._free.extend(range(rows - 1, max(old, IDENTITY_ROW + 1) - 1, -1))

    # Admission (host side; device writes are staged until `flush`) -------------------------------

    def admit(self, key: str, params: DualTemperatureParams) -> tuple[int, bool]:
        """(row of the sample `key`, whether it is new). A known key is a preempted sample coming back."""
        with self._lock:
            row = self._row_of_key.get(key)
            if row is not None:
                return row, False
            if not self._free:
                self._grow(2 * self._rows)
            row = self._free.pop()
            self._row_of_key[key] = row
            self._staged.append((row, params))
            return row, True

    def set_next_index(self, row: int, index: int) -> None:
        """Output index of the row's next token (the V1 adapter, which is not given positions)."""
        with self._lock:
            self._staged_next_index[row] = index

    def attach(self, row: int) -> None:
        if row != IDENTITY_ROW:
            with self._lock:
                self._attached[row] = self._attached.get(row, 0) + 1

    def detach(self, row: int) -> None:
        """A batch slot stopped pointing at `row`; a row already read is freed once no slot does."""
        if row == IDENTITY_ROW:
            return
        with self._lock:
            left = self._attached.get(row, 0) - 1
            if left > 0:
                self._attached[row] = left
                return
            self._attached.pop(row, None)
            if row in self._orphans:
                self._orphans.discard(row)
                self._free.append(row)

    def flush(self) -> None:
        """Writes the staged admissions to the device: one host-to-device copy per column."""
        with self._lock:
            staged, self._staged = self._staged, []
            next_index, self._staged_next_index = self._staged_next_index, {}
        if staged:
            rows = self._to_device([row for row, _ in staged], torch.int64)
            values = self._to_device([[getattr(p, f) for f in _PARAM_FIELDS] for _, p in staged], torch.float32)
            for column, name in enumerate(_PARAM_FIELDS):
                getattr(self, name).index_copy_(0, rows, values[:, column])
            running = self._to_device([p.threshold_mode == "running_quantile" for _, p in staged], torch.bool)
            self.running.index_copy_(0, rows, running)
            self.ring_index.index_fill_(0, rows, -1)
            self.next_index.index_fill_(0, rows, 0)
            self.broken.index_fill_(0, rows, 0)
        if next_index:
            rows = self._to_device(list(next_index), torch.int64)
            self.next_index.index_copy_(0, rows, self._to_device(list(next_index.values()), torch.int64))

    def _to_device(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        # Pinned host memory so the copy is queued behind the running step instead of waiting for it.
        pinned = self.device.type == "cuda"
        return torch.tensor(values, dtype=dtype, pin_memory=pinned).to(self.device, non_blocking=pinned)

    # Decoding ----------------------------------------------------------------------------------------

    def step(
        self, logits: torch.Tensor, rows: torch.Tensor, out_index: torch.Tensor, kept: torch.Tensor
    ) -> torch.Tensor:
        """One decoding step of a batch: returns the tempered logits (a new tensor).

        logits: [batch, vocab] raw (T = 1); rows: [batch] int64 row of each logits row (IDENTITY_ROW for
        requests without dual temperature); out_index: [batch] int64 output index of the token sampled
        from the row; kept: [batch] bool, false where vLLM throws the sample away (a prefill chunk).
        """
        previous = torch.remainder(out_index - 1, RING)
        first = out_index <= 0
        tau_before = torch.where(first, self.threshold[rows], self.ring_tau[rows, previous])
        count_before = torch.where(first, 0, self.ring_high_count[rows, previous])
        missing = kept & ~first & (self.ring_index[rows, previous] != out_index - 1)
        params = DualTemperatureRows(
            t_high=self.t_high[rows],
            t_low=self.t_low[rows],
            tau=tau_before,
            running=self.running[rows],
            rho=self.rho[rows],
            quantile_lr=self.quantile_lr[rows],
        )
        tempered, high, next_tau = dual_temperature_step(logits, params)
        target = torch.where(kept, rows, IDENTITY_ROW)
        column = torch.remainder(out_index, RING)
        self.ring_index[target, column] = out_index
        self.ring_high_count[target, column] = count_before + high.to(torch.int64)
        self.ring_tau[target, column] = next_tau
        self.next_index[target] = out_index + 1
        self.broken.index_put_((target,), missing.to(torch.int64), accumulate=True)
        return tempered

    # Read-back ---------------------------------------------------------------------------------------

    def holds(self, key: str) -> bool:
        with self._lock:
            return key in self._row_of_key

    def read_counts(self, emitted: Mapping[str, int]) -> dict[str, int]:
        """High-temperature tokens among the first `emitted[key]` output tokens of each held key.

        Forgets the keys read (their rows are reused). A sample this state admitted but never stepped
        gets no answer (another rank samples it); 0 emitted tokens count 0. Raises naming the samples whose
        count is not exactly known (more than RING - 1 discarded positions, or a position that skipped its
        predecessor).
        """
        with self._lock:
            found = [(key, self._row_of_key.pop(key), n) for key, n in emitted.items() if key in self._row_of_key]
        if not found:
            return {}
        rows = torch.tensor([row for _, row, _ in found], dtype=torch.int64, device=self.device)
        last = torch.tensor([max(n - 1, 0) for _, _, n in found], dtype=torch.int64, device=self.device)
        column = torch.remainder(last, RING)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the step writing these rows may run on another stream
        stepped = self.ring_index[rows].amax(dim=1) >= 0
        read = torch.stack(
            [self.ring_index[rows, column], self.ring_high_count[rows, column], self.broken[rows], stepped.long()]
        )
        index, count, broken, ran = read.cpu().tolist()
        counts: dict[str, int] = {}
        inexact: list[str] = []
        for (key, _, n), at, high, bad, was_stepped in zip(found, index, count, broken, ran, strict=True):
            if n == 0:
                counts[key] = 0
            elif not was_stepped:
                continue
            elif at != n - 1 or bad:
                inexact.append(f"{key} (emitted {n}, last position held {at}, broken steps {bad})")
            else:
                counts[key] = high
        with self._lock:
            for _, row, _ in found:
                if row in self._attached:
                    self._orphans.add(row)
                else:
                    self._free.append(row)
        if inexact:
            raise RuntimeError("high-temperature count not exactly known for: " + "; ".join(inexact))
        return counts

    @property
    def rows_in_use(self) -> int:
        with self._lock:
            return len(self._row_of_key) + len(self._orphans)


_STATES: weakref.WeakSet[DualTemperatureState] = weakref.WeakSet()


def drain_high_temperature_counts(emitted: Mapping[str, int]) -> dict[str, int]:
    """`read_counts` over every state of this process (one per logits processor; the worker RPC)."""
    counts: dict[str, int] = {}
    for state in list(_STATES):
        held = {key: n for key, n in emitted.items() if state.holds(key)}
        if held:
            counts.update(state.read_counts(held))
    return counts
