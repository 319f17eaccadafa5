"""The learner's batch, its data-parallel shard, and its micro-batches (padded or packed).

Token alignment: every per-token tensor is [B, S] like `input_ids`, and column t refers to token
input_ids[:, t] (its log-prob comes from the logits at position t - 1). `response_mask` is 1 on the
response tokens that count and 0 on prompt and padding (so column 0 is always 0).
"""

from __future__ import annotations

import dataclasses
import math

import torch

LOSS_FIELDS = ("advantages", "old_logp", "ref_logp", "rollout_logp", "old_entropy")


@dataclasses.dataclass(frozen=True)
class LearnerBatch:
    """One mini-batch of sequences (prompt + response), right-padded. Frozen: a batch with more fields
    (the old-policy log-probs) is a new batch, `dataclasses.replace`d, so its checks run again.

    input_ids: [B, S] int64; seq_lens: [B] valid tokens per row; response_mask: [B, S] (0/1).
    advantages, old_logp, ref_logp, rollout_logp, old_entropy: [B, S] float or None (token-aligned;
    old_entropy = entropies of the old-policy pass, used by forking `entropy_source='old'`).
    """

    input_ids: torch.Tensor
    seq_lens: torch.Tensor
    response_mask: torch.Tensor
    advantages: torch.Tensor | None = None
    old_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    rollout_logp: torch.Tensor | None = None
    old_entropy: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, S], got {tuple(self.input_ids.shape)}")
        batch, width = self.input_ids.shape
        if self.seq_lens.shape != (batch,):
            raise ValueError(f"seq_lens must be [{batch}], got {tuple(self.seq_lens.shape)}")
        if bool((self.seq_lens < 1).any()) or bool((self.seq_lens > width).any()):
            raise ValueError(f"seq_lens must be in [1, {width}]")
        for name in ("response_mask", *LOSS_FIELDS):
            value = getattr(self, name)
            if value is not None and value.shape != (batch, width):
                raise ValueError(f"{name} must be [{batch}, {width}] like input_ids, got {tuple(value.shape)}")
        positions = torch.arange(width).unsqueeze(0)
        if bool(self.response_mask[:, 0].any()):
            raise ValueError("response_mask[:, 0] must be 0: the first token has no log-prob")
        if bool((self.response_mask.bool() & (positions >= self.seq_lens.unsqueeze(1))).any()):
            raise ValueError("response_mask marks tokens beyond seq_lens")

    @property
    def num_sequences(self) -> int:
        return int(self.input_ids.shape[0])

    def rows(self, index: torch.Tensor | slice) -> LearnerBatch:
        """The sub-batch of the given rows (same width)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return LearnerBatch(**{k: (None if v is None else v[index]) for k, v in values.items()})


def dp_bounds(num_sequences: int, dp_rank: int, dp_size: int) -> tuple[int, int]:
    """Rows [start, end) of DP rank r: contiguous, the first B % dp ranks hold one row more than the others.

    Any B is accepted (dynamic sampling in `filter_only` mode leaves any number of groups): the objective
    library normalises by counts summed over DP, so unequal shards still give the exact mini-batch loss."""
    base, extra = divmod(num_sequences, dp_size)
    start = dp_rank * base + min(dp_rank, extra)
    return start, start + base + (1 if dp_rank < extra else 0)


def zero_weight_rows(batch: LearnerBatch, count: int) -> LearnerBatch:
    """`count` copies of row 0 with an empty response mask: they run through the model (every rank must
    take part in the step's collectives) but count no token or sequence and carry zero loss and gradient."""
    rows = batch.rows(torch.zeros(count, dtype=torch.long))
    return dataclasses.replace(rows, response_mask=torch.zeros_like(rows.response_mask))


def dp_shard(batch: LearnerBatch, dp_rank: int, dp_size: int) -> LearnerBatch:
    """DP rank r's rows of the global mini-batch (`dp_bounds`); a rank left without rows (B < dp) gets one
    zero-weight row instead, so that it still runs the collectives of the step."""
    start, end = dp_bounds(batch.num_sequences, dp_rank, dp_size)
    if start == end:
        return zero_weight_rows(batch, 1)
    return batch.rows(slice(start, end))


@dataclasses.dataclass
class MicroBatch:
    """One micro-batch as the model sees it plus the map back to token-aligned loss tensors.

    tokens: [rows, L]; position_ids: [rows, L] and document_ids: [rows, L] int32 (which of the row's
    sequences each position belongs to; trailing padding is one more) for packed rows, else None (plain
    causal). The document ids stand in for an attention mask: no [L, L] tensor is built (attention.py).
    pred_index: [n] flat positions (row * L + col) whose logits
    predict a response token; target_ids: [n] those tokens; out_rows / out_cols: [n] where each goes
    in the [num_seqs, S] loss tensors; seq_index: [num_seqs] rows of the rank's batch it covers.
    fields: the batch's token-aligned tensors restricted to seq_index ([num_seqs, S]).
    """

    tokens: torch.Tensor
    position_ids: torch.Tensor | None
    document_ids: torch.Tensor | None
    pred_index: torch.Tensor
    target_ids: torch.Tensor
    out_rows: torch.Tensor
    out_cols: torch.Tensor
    seq_index: torch.Tensor
    fields: dict[str, torch.Tensor]
    selection_mask: torch.Tensor | None = None

    @property
    def response_mask(self) -> torch.Tensor:
        return self.fields["response_mask"]

    def to(self, device: torch.device, inputs: bool = True) -> MicroBatch:
        """A copy on `device`. inputs=False leaves the model inputs (MODEL_INPUTS: the [rows, L] tokens and
        positions and document ids, the micro-batch's largest tensors) where they are, for
        `inputs_to` to move when the schedule reaches this micro-batch."""
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key, value in moved.items():
            if isinstance(value, torch.Tensor) and (inputs or key not in MODEL_INPUTS):
                moved[key] = value.to(device, non_blocking=True)
        moved["fields"] = {k: v.to(device, non_blocking=True) for k, v in self.fields.items()}
        return MicroBatch(**moved)

    def inputs_to(self, device: torch.device) -> MicroBatch:
        """The same micro-batch with its model inputs on `device` (a shallow copy; self is unchanged)."""
        moved = {name: value.to(device, non_blocking=True) for name in MODEL_INPUTS
                 if (value := getattr(self, name)) is not None}
        return dataclasses.replace(self, **moved)


MODEL_INPUTS = ("tokens", "position_ids", "document_ids")


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def _fields(batch: LearnerBatch, index: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {"response_mask": batch.response_mask[index]}
    for name in LOSS_FIELDS:
        value = getattr(batch, name)
        if value is not None:
            out[name] = value[index]
    return out


def padded_micro_batches(batch: LearnerBatch, micro_batch_size: int, length_multiple: int = 1) -> list[MicroBatch]:
    """Rows of right-padded sequences, `micro_batch_size` per micro-batch, width = longest (rounded).

    A last micro-batch with fewer sequences keeps `micro_batch_size` rows (pipeline stages exchange tensors
    of one fixed shape): the extra rows are all padding, with no predicted position, so they add nothing."""
    width = _round_up(int(batch.seq_lens.max()), length_multiple)
    out = []
    for start in range(0, batch.num_sequences, micro_batch_size):
        index = torch.arange(start, min(start + micro_batch_size, batch.num_sequences))
        tokens = torch.zeros(micro_batch_size, width, dtype=torch.long)
        take = min(width, batch.input_ids.shape[1])
        tokens[: len(index), :take] = batch.input_ids[index, :take]
        rows, cols = batch.response_mask[index].nonzero(as_tuple=True)
        out.append(
            MicroBatch(
                tokens=tokens,
                position_ids=None,
                document_ids=None,
                pred_index=rows * width + cols - 1,
                target_ids=tokens[rows, cols],
                out_rows=rows,
                out_cols=cols,
                seq_index=index,
                fields=_fields(batch, index),
            )
        )
    return out


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing assignment of sequences to rows of `capacity` tokens (deterministic)."""
    if max(lengths) > capacity:
        raise ValueError(f"a sequence of {max(lengths)} tokens exceeds micro_batch.max_tokens={capacity}")
    rows: list[list[int]] = []
    free: list[int] = []
    for seq in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for row, room in enumerate(free):
            if lengths[seq] <= room:
                rows[row].append(seq)
                free[row] -= lengths[seq]
                break
        else:
            rows.append([seq])
            free.append(capacity - lengths[seq])
    return [sorted(row) for row in rows]


def packed_micro_batches(batch: LearnerBatch, max_tokens: int | None, length_multiple: int = 1) -> list[MicroBatch]:
    """One row per micro-batch holding several whole sequences; attention is block-diagonal causal."""
    lengths = [int(n) for n in batch.seq_lens]
    width = _round_up(max_tokens or max(lengths), length_multiple)
    out = []
    for members in pack_rows(lengths, width):
        tokens = torch.zeros(1, width, dtype=torch.long)
        positions = torch.zeros(1, width, dtype=torch.long)
        documents = torch.full((1, width), len(members), dtype=torch.int32)  # padding: one more document
        pred, tgt, out_rows, out_cols = [], [], [], []
        offset = 0
        for local, seq in enumerate(members):
            n = lengths[seq]
            tokens[0, offset : offset + n] = batch.input_ids[seq, :n]
            positions[0, offset : offset + n] = torch.arange(n)
            documents[0, offset : offset + n] = local
            cols = batch.response_mask[seq].nonzero(as_tuple=True)[0]
            pred.append(offset + cols - 1)
            tgt.append(batch.input_ids[seq, cols])
            out_rows.append(torch.full_like(cols, local))
            out_cols.append(cols)
            offset += n
        index = torch.tensor(members, dtype=torch.long)
        out.append(
            MicroBatch(
                tokens=tokens,
                position_ids=positions,
                document_ids=documents,
                pred_index=torch.cat(pred),
                target_ids=torch.cat(tgt),
                out_rows=torch.cat(out_rows),
                out_cols=torch.cat(out_cols),
                seq_index=index,
                fields=_fields(batch, index),
            )
        )
    return out
