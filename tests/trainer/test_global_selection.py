"""`mini_batch_global` forking selection: radix select and masks vs sort-based `topk_token_mask`.

Single-process property tests (group=None) and real 2-rank gloo runs (spec 8.4 D1, D2).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st

from forkrl.trainer.global_selection import (
    float_to_ordered_key,
    global_forking_masks,
    ordered_key_to_float,
    radix_select_kth,
)
from forkrl.trainer.selection import num_selected, topk_token_mask
from tests.distributed_utils import run_on_ranks

MicroBatch = tuple[torch.Tensor, torch.Tensor]  # (entropy [b, l] fp32, response_mask [b, l] bool)


def concatenated_reference(
    micro_batches: list[MicroBatch], rho: float, select: str, tie_rule: str
) -> tuple[list[torch.Tensor], float]:
    """topk_token_mask on all micro-batches flattened and concatenated in order, split back."""
    if not micro_batches:
        return [], math.nan
    entropy = torch.cat([e.reshape(-1) for e, _ in micro_batches])
    mask = torch.cat([m.reshape(-1) for _, m in micro_batches])
    selected, tau = topk_token_mask(entropy, mask, rho, select, tie_rule)
    sizes = [m.numel() for _, m in micro_batches]
    parts = torch.split(selected, sizes)
    return [p.reshape(m.shape) for p, (_, m) in zip(parts, micro_batches, strict=True)], tau


# ---------------------------------------------------------------------------------------------------
# Single process.

VALUES = st.one_of(
    st.sampled_from([0.0, 0.01, 0.5, 0.672, 1.0, 2.0]),  # many duplicates
    st.floats(min_value=0.0, max_value=12.0, width=32),
)


@st.composite
def micro_batch_lists(draw: st.DrawFn) -> list[MicroBatch]:
    out = []
    for _ in range(draw(st.integers(0, 4))):
        rows, cols = draw(st.integers(1, 3)), draw(st.integers(1, 6))
        values = draw(st.lists(VALUES, min_size=rows * cols, max_size=rows * cols))
        mask = draw(st.lists(st.booleans(), min_size=rows * cols, max_size=rows * cols))
        out.append(
            (
                torch.tensor(values, dtype=torch.float32).reshape(rows, cols),
                torch.tensor(mask, dtype=torch.bool).reshape(rows, cols),
            )
        )
    return out


RHOS = st.floats(min_value=0.01, max_value=1.0)


@settings(max_examples=150)
@given(micro_batches=micro_batch_lists(), rho=RHOS, select=st.sampled_from(["top", "bottom"]))
def test_exact_k_selects_exactly_k(micro_batches: list[MicroBatch], rho: float, select: str) -> None:
    masks, tau, k = global_forking_masks([e for e, _ in micro_batches], [m for _, m in micro_batches], rho, select)
    valid = sum(int(m.sum()) for _, m in micro_batches)
    assert k == num_selected(valid, rho)
    assert sum(int(m.sum()) for m in masks) == k
    for (_, response_mask), mask in zip(micro_batches, masks, strict=True):
        assert mask.dtype == torch.bool and not (mask & ~response_mask).any()
    expected, expected_tau = concatenated_reference(micro_batches, rho, select, "exact_k")
    assert all(torch.equal(a, b) for a, b in zip(masks, expected, strict=True))
    assert (math.isnan(tau) and k == 0) or tau == expected_tau


@settings(max_examples=150)
@given(micro_batches=micro_batch_lists(), rho=RHOS, select=st.sampled_from(["top", "bottom"]))
def test_geq_tau_keeps_every_tie(micro_batches: list[MicroBatch], rho: float, select: str) -> None:
    masks, tau, k = global_forking_masks(
        [e for e, _ in micro_batches], [m for _, m in micro_batches], rho, select, "geq_tau"
    )
    assert sum(int(m.sum()) for m in masks) >= k
    for (entropy, response_mask), mask in zip(micro_batches, masks, strict=True):
        kept, dropped = entropy[mask], entropy[response_mask & ~mask]
        if select == "top":
            assert (kept >= tau).all() and (dropped < tau).all()
        else:
            assert (kept <= tau).all() and (dropped > tau).all()
    expected, _ = concatenated_reference(micro_batches, rho, select, "geq_tau")
    assert all(torch.equal(a, b) for a, b in zip(masks, expected, strict=True))


@settings(max_examples=100)
@given(values=st.lists(VALUES, min_size=1, max_size=40), data=st.data())
def test_radix_select_matches_sort(values: list[float], data: st.DataObject) -> None:
    tensor = torch.tensor(values, dtype=torch.float32)
    k = data.draw(st.integers(1, len(values)))
    for largest in (True, False):
        tau, beyond = radix_select_kth(tensor, k, largest=largest)
        ordered = torch.sort(tensor, descending=largest).values
        assert tau == float(ordered[k - 1])
        assert beyond == int((tensor > tau).sum() if largest else (tensor < tau).sum())


def test_ordered_keys_follow_float_order() -> None:
    values = torch.tensor([-3.0, -1e-8, -0.0, 0.0, 1e-30, 0.5, 0.672, 2.0, float("inf")])
    keys = float_to_ordered_key(values)
    assert torch.all(keys[1:] >= keys[:-1]) and keys[2] == keys[3]
    assert int(keys.min()) >= 0 and int(keys.max()) < 2**32
    assert [ordered_key_to_float(int(key)) for key in keys] == [abs(v) if v == 0 else v for v in values.tolist()]


def test_spec_k_rule_and_empty_batch() -> None:
    entropy = torch.arange(10, dtype=torch.float32).reshape(2, 5)
    masks, tau, k = global_forking_masks([entropy], [torch.ones(2, 5, dtype=torch.bool)], 0.7)
    assert k == 7 and tau == 3.0 and masks[0].reshape(-1).tolist() == [False] * 3 + [True] * 7
    masks, tau, k = global_forking_masks([entropy], [torch.zeros(2, 5, dtype=torch.bool)], 0.2)
    assert k == 0 and math.isnan(tau) and not masks[0].any()


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: radix_select_kth(torch.tensor([1.0, float("nan")]), 1), "values"),
        (lambda: radix_select_kth(torch.tensor([1.0, 2.0]), 3), "k"),
        (lambda: radix_select_kth(torch.tensor([1.0, 2.0]), 0), "k"),
        (lambda: global_forking_masks([torch.ones(2, 3)], [torch.ones(2, 2)], 0.2), "response_masks"),
        (lambda: global_forking_masks([torch.ones(2, 3)], [torch.ones(2, 3)], 0.0), "rho"),
        (lambda: global_forking_masks([torch.ones(2, 3)], [torch.ones(2, 3)], 0.2, select="middle"), "select"),
    ],
)
def test_bad_input_names_the_field(call, field: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=field):
        call()


# ---------------------------------------------------------------------------------------------------
# Two gloo ranks.

D1_ENTROPIES = ([2.0, 1.5, 1.0, 0.5], [0.2, 0.1, 0.05, 0.01])


def _random_cases(seed: int) -> list[dict]:
    """Per-rank micro-batch lists with heavy duplication; some ranks have no tokens at all."""
    gen = torch.Generator().manual_seed(seed)
    ones = torch.ones(1, 3)
    everything = torch.ones(1, 3, dtype=torch.bool)
    # All-equal entropies: the k = 5 ties split across ranks and micro-batches in (rank, mb, pos) order.
    cases = [
        {
            "per_rank": [[(ones, everything), (ones[:, :1], everything[:, :1])], [(ones, everything)]],
            "rho": 0.6,
            "select": select,
            "tie_rule": "exact_k",
        }
        for select in ("top", "bottom")
    ]
    for index in range(24):
        per_rank = []
        for rank in range(2):
            count = 0 if (index % 5 == 0 and rank == index % 2) else int(torch.randint(1, 4, (1,), generator=gen))
            batches = []
            for _ in range(count):
                rows, cols = (int(x) for x in torch.randint(1, 6, (2,), generator=gen))
                coarse = torch.randint(0, 6, (rows, cols), generator=gen).float() * 0.25
                fine = torch.rand(rows, cols, generator=gen) * 3
                entropy = torch.where(torch.rand(rows, cols, generator=gen) < 0.7, coarse, fine)
                batches.append((entropy, torch.rand(rows, cols, generator=gen) < 0.8))
            per_rank.append(batches)
        cases.append(
            {
                "per_rank": per_rank,
                "rho": float(torch.rand(1, generator=gen)) * 0.9 + 0.05,
                "select": ("top", "bottom")[index % 2],
                "tie_rule": ("exact_k", "geq_tau")[(index // 2) % 2],
            }
        )
    return cases


def _selection_worker(rank: int, world_size: int, cases: list[dict]) -> dict:
    group = dist.group.WORLD
    d1 = torch.tensor([D1_ENTROPIES[rank]])
    d1_mask = torch.ones_like(d1, dtype=torch.bool)
    global_masks, global_tau, global_k = global_forking_masks([d1], [d1_mask], 0.25, group=group)
    micro_mask, micro_tau = topk_token_mask(d1, d1_mask, 0.25)

    masks = []
    radix = []
    for case in cases:
        batches = case["per_rank"][rank]
        masks.append(
            global_forking_masks(
                [e for e, _ in batches],
                [m for _, m in batches],
                case["rho"],
                case["select"],
                case["tie_rule"],
                group=group,
            )
        )
        flat = torch.cat([e[m] for e, m in batches] + [torch.empty(0)])
        total = torch.tensor([flat.numel()])
        dist.all_reduce(total, group=group)
        for k in sorted({1, 2, max(1, int(total) // 3), int(total)}):
            if 1 <= k <= int(total):
                radix.append((k, case["select"] == "top", *radix_select_kth(flat, k, group, case["select"] == "top")))
    return {
        "d1": (global_masks[0], global_tau, global_k, micro_mask, micro_tau),
        "masks": masks,
        "radix": radix,
    }


@pytest.fixture(scope="module")
def two_rank_results() -> tuple[list[dict], list[dict]]:
    cases = _random_cases(seed=7)
    return cases, run_on_ranks(_selection_worker, 2, args=(cases,))


def test_d1_global_and_micro_batch_scopes_differ(two_rank_results: tuple) -> None:
    _, (rank0, rank1) = two_rank_results
    g0, tau, k, m0, _ = rank0["d1"]
    g1, tau1, k1, m1, _ = rank1["d1"]
    assert k == k1 == 2 and tau == tau1 == 1.5
    assert g0.tolist() == [[True, True, False, False]] and not g1.any()  # {2.0, 1.5}
    assert m0.tolist() == [[True, False, False, False]]  # {2.0}
    assert m1.tolist() == [[True, False, False, False]]  # {0.2}


def test_d2_masks_equal_topk_on_the_concatenation(two_rank_results: tuple) -> None:
    cases, (rank0, rank1) = two_rank_results
    for case, (masks0, tau0, k0), (masks1, tau1, k1) in zip(cases, rank0["masks"], rank1["masks"], strict=True):
        everything = case["per_rank"][0] + case["per_rank"][1]
        expected, expected_tau = concatenated_reference(everything, case["rho"], case["select"], case["tie_rule"])
        assert [m.tolist() for m in masks0 + masks1] == [m.tolist() for m in expected]
        valid = sum(int(m.sum()) for _, m in everything)
        assert k0 == k1 == num_selected(valid, case["rho"])
        assert tau0 == tau1 == expected_tau or (k0 == 0 and math.isnan(tau0) and math.isnan(tau1))
        count = sum(int(m.sum()) for m in masks0 + masks1)
        assert count == k0 if case["tie_rule"] == "exact_k" else count >= k0


def test_d2_radix_select_equals_sorted_value(two_rank_results: tuple) -> None:
    cases, (rank0, rank1) = two_rank_results
    assert rank0["radix"] == rank1["radix"] and len(rank0["radix"]) > 40
    expected = []
    for case in cases:
        flat = torch.cat([e[m] for batches in case["per_rank"] for e, m in batches] + [torch.empty(0)])
        largest = case["select"] == "top"
        for k in sorted({1, 2, max(1, flat.numel() // 3), flat.numel()}):
            if 1 <= k <= flat.numel():
                tau = float(torch.sort(flat, descending=largest).values[k - 1])
                beyond = int((flat > tau).sum() if largest else (flat < tau).sum())
                expected.append((k, largest, tau, beyond))
    assert rank0["radix"] == expected
    assert any(beyond < k - 1 for k, _, _, beyond in expected)  # ties at tau were exercised
