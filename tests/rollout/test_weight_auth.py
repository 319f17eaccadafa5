"""The weight-sync rendezvous with the job's control token: a real gloo sync between a sender and receivers
(threads of this process on 127.0.0.1) moves tensors only when both sides prove the same token; a receiver
with a wrong or no token, a sender without one, and an impostor store are all refused, naming the rank,
and nothing is installed."""

from __future__ import annotations

import datetime
import threading

import pytest
import torch
import torch.distributed as dist

from forkrl.rollout.control_token import new_control_token, proof
from forkrl.rollout.hf_engine import HFEngine
from forkrl.rollout.tiny_model import build_tiny_model
from forkrl.rollout.weight_auth import group_prefix, prove_to_sender
from forkrl.rollout.weight_sync import WeightReceiver, WeightSender
from tests.rollout.helpers import one_torch_thread, tiny

LOOPBACK = "127.0.0.1"  # every rank of these tests is a thread of this process
TIMEOUT_S = 20.0


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_torch_thread():
        yield


def _tensors() -> list[tuple[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(3)
    return [("a.weight", torch.randn((4, 6), generator=generator)), ("b.bias", torch.randn((5,), generator=generator))]


def _sync(sender_token: str | None, receiver_tokens: list[str | None]) -> tuple[BaseException | None, list]:
    """One sync; (what the sender raised, the receivers after they ended)."""
    sender = WeightSender(master_addr=LOOPBACK, timeout_s=TIMEOUT_S, token=sender_token)
    world = 1 + len(receiver_tokens)
    receivers = [
        WeightReceiver(sender.begin_request(version=4, rank_offset=1 + i, world_size=world), token=token).start()
        for i, token in enumerate(receiver_tokens)
    ]
    raised: BaseException | None = None
    try:
        sender.send(_tensors(), version=4, world_size=world)
    except PermissionError as exc:
        raised = exc
    for receiver in receivers:
        receiver._supervisor.join(TIMEOUT_S)
    sender.close()
    return raised, receivers


def test_the_same_token_on_both_sides_moves_every_tensor() -> None:
    token = new_control_token()
    raised, receivers = _sync(token, [token, token])
    assert raised is None
    expected = dict(_tensors())
    for receiver in receivers:
        staged = receiver.join(1.0)
        assert set(staged) == set(expected)
        assert all(torch.equal(staged[name], expected[name]) for name in expected)


@pytest.mark.parametrize(
    ("receiver_tokens", "problem"),
    [
        (["right", "wrong"], "rank 2 presented a wrong control token"),
        ([None, "right"], "rank 1 presented no control token"),
    ],
)
def test_a_receiver_without_the_token_is_refused_and_nothing_moves(receiver_tokens, problem) -> None:
    token = new_control_token()
    tokens = [token if t == "right" else (new_control_token() if t == "wrong" else None) for t in receiver_tokens]
    raised, receivers = _sync(token, tokens)
    assert isinstance(raised, PermissionError) and problem in str(raised)
    for receiver in receivers:  # every receiver, the honest one too, fails at once and stages nothing
        assert receiver.state == "failed" and receiver.staged == {}
        assert problem in receiver.error


def test_a_receiver_with_a_token_refuses_a_sender_without_one() -> None:
    raised, receivers = _sync(None, [new_control_token()])
    assert isinstance(raised, PermissionError) and "refuses a sender without one" in str(raised)
    assert receivers[0].state == "failed" and receivers[0].staged == {}


def test_without_tokens_on_either_side_the_sync_is_open() -> None:
    raised, receivers = _sync(None, [None])
    assert raised is None and set(receivers[0].join(1.0)) == {"a.weight", "b.bias"}


def test_a_receiver_refuses_an_impostor_store_that_cannot_prove_the_token() -> None:
    """A store that answers like a sender (nonce, then a verdict) but does not know the token."""
    token = new_control_token()
    store = dist.TCPStore(LOOPBACK, 0, is_master=True, timeout=datetime.timedelta(seconds=TIMEOUT_S),
                          wait_for_workers=False)
    group = "forkrl-weights/v1/impostor"
    store.set(f"{group}/auth/nonce", "00" * 16)
    client = dist.TCPStore(LOOPBACK, store.port, is_master=False, timeout=datetime.timedelta(seconds=TIMEOUT_S))
    outcome: list[BaseException | str] = []
    thread = threading.Thread(target=lambda: outcome.append(_catch(prove_to_sender, client, group, token, 1)))
    thread.start()
    presented = store.get(f"{group}/auth/proof/1").decode()
    assert presented == proof(token, "receiver", group, "00" * 16, "1")  # an HMAC: the token never travels
    assert token not in presented
    store.set(f"{group}/auth/verdict", proof(new_control_token(), "sender", group, "00" * 16))
    thread.join(TIMEOUT_S)
    assert isinstance(outcome[0], PermissionError) and "did not prove the control token" in str(outcome[0])


def _catch(fn, *args) -> BaseException | str:
    try:
        return fn(*args)
    except BaseException as exc:
        return exc


def test_the_group_prefix_cannot_be_found_without_the_token() -> None:
    token, other = new_control_token(), new_control_token()
    nonce = "ab" * 16
    assert group_prefix("g", token, nonce) == group_prefix("g", token, nonce)
    assert group_prefix("g", token, nonce) != group_prefix("g", other, nonce)
    assert group_prefix("g", token, nonce) != group_prefix("g", token, "cd" * 16)
    assert group_prefix("g", None, nonce) == "g/open"


def test_hf_engine_keeps_its_weights_when_the_sender_cannot_prove_the_token() -> None:
    model, _ = build_tiny_model()
    engine = HFEngine(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    learner, _ = tiny(1, "float32")
    token = new_control_token()
    sender = WeightSender(master_addr=LOOPBACK, timeout_s=TIMEOUT_S, token=new_control_token())
    engine.begin_weight_sync(sender.begin_request(version=5, rank_offset=1, world_size=2), token)
    with pytest.raises(PermissionError, match="rank 1 presented a wrong control token"):
        sender.send(learner.named_parameters(), version=5, world_size=2)
    with pytest.raises(RuntimeError, match="wrong control token"):
        engine.commit_weight_sync(5, TIMEOUT_S)
    assert engine.weight_version == 0
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    sender.close()
