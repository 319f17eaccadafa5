"""The prompt stream: every row once per epoch, seeded order, exact resume from a cursor."""

from __future__ import annotations

import pytest

from forkrl.trainer.data.schema import PromptRow
from forkrl.trainer.data.stream import PromptStream

ROWS = [PromptRow(prompt=f"{i}+0=", answer=str(i)) for i in range(7)]


def test_each_epoch_visits_every_row_once() -> None:
    stream = PromptStream(ROWS, seed=3)
    first, second = stream.take(7), stream.take(7)
    assert sorted(r.answer for r in first) == sorted(r.answer for r in ROWS)
    assert sorted(r.answer for r in second) == sorted(r.answer for r in ROWS)
    assert [r.answer for r in first] != [r.answer for r in second]  # reshuffled per epoch
    assert stream.state.epoch == 1 and stream.state.position == 7


def test_resume_from_cursor_continues_identically() -> None:
    reference = PromptStream(ROWS, seed=5)
    expected = [r.answer for r in reference.take(20)]
    stream = PromptStream(ROWS, seed=5)
    head = [r.answer for r in stream.take(9)]
    resumed = PromptStream(ROWS, seed=5)
    resumed.restore(stream.state.to_dict())
    assert head + [r.answer for r in resumed.take(11)] == expected


def test_unshuffled_and_empty() -> None:
    assert [r.answer for r in PromptStream(ROWS, seed=0, shuffle=False).take(3)] == ["0", "1", "2"]
    with pytest.raises(ValueError, match="empty"):
        PromptStream([], seed=0)
