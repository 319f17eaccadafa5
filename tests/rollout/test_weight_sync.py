"""Weight-sync wire format, a real gloo broadcast between a sender and receivers on 127.0.0.1 (threads of
this process, each with its own process group), HFEngine's staged begin/commit, checkpoint fallback."""

from __future__ import annotations

import stat
import threading

import pytest
import torch

from forkrl.rollout.engine import WeightSyncConflictError
from forkrl.rollout.hf_engine import HFEngine
from forkrl.rollout.tiny_model import build_tiny_model
from forkrl.rollout.weight_checkpoint import iter_checkpoint_tensors, write_checkpoint
from forkrl.rollout.weight_sync import (
    ParamSpec,
    WeightReceiver,
    WeightSender,
    WeightSyncBegin,
    iter_buckets,
    pack_bucket,
    unpack_bucket,
)
from tests.rollout.helpers import one_torch_thread, tiny

LOOPBACK = "127.0.0.1"  # every rank of these tests is a thread of this process


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_torch_thread():
        yield


def _tensors() -> list[tuple[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        ("a.weight", torch.randn((3, 5), generator=generator)),
        ("b.weight", torch.randn((7,), generator=generator).to(torch.bfloat16)),
        ("c.steps", torch.tensor(12345678901, dtype=torch.int64)),
        ("d.mask", torch.tensor([True, False, True])),
        ("e.empty", torch.zeros((0, 4))),
        ("f.weight", torch.randn((2, 3), generator=generator, dtype=torch.float64).t()),  # non-contiguous
    ]


def test_pack_unpack_round_trip_keeps_dtype_shape_and_values() -> None:
    named = _tensors()
    entries, payload = pack_bucket(named, torch.device("cpu"))
    assert all(entry[3] % 64 == 0 for entry in entries)
    unpacked = dict(unpack_bucket(entries, payload))
    for name, tensor in named:
        assert unpacked[name].dtype == tensor.dtype
        assert unpacked[name].shape == tensor.shape
        assert torch.equal(unpacked[name], tensor)


def test_buckets_respect_the_byte_budget() -> None:
    named = [(f"t{i}", torch.zeros(128, dtype=torch.float32)) for i in range(10)]  # 512 bytes each
    assert [len(b) for b in iter_buckets(named, 1600)] == [3, 3, 3, 1]
    odd = [(f"t{i}", torch.zeros(100, dtype=torch.float32)) for i in range(4)]  # 400 bytes, 448 aligned
    assert [len(b) for b in iter_buckets(odd, 900)] == [2, 2]
    assert [len(b) for b in iter_buckets(named, 0)] == [1] * 10
    assert [len(b) for b in iter_buckets([("big", torch.zeros(1000))], 10)] == [1]


def _receive_in_threads(
    sender: WeightSender, ranks: list[int], version: int, **receiver_kwargs
) -> list[WeightReceiver]:
    receivers = []
    for rank in ranks:
        begin = sender.begin_request(version=version, rank_offset=rank, world_size=1 + len(ranks))
        receivers.append(WeightReceiver(begin, **receiver_kwargs).start())
    return receivers


def test_broadcast_to_two_receivers_over_gloo() -> None:
    named = _tensors()
    sender = WeightSender(master_addr=LOOPBACK, bucket_bytes=64, timeout_s=30)
    receivers = _receive_in_threads(sender, [1, 2], version=7)
    stats = sender.send(named, version=7, world_size=3)
    assert stats.num_tensors == len(named)
    assert stats.num_bytes == sum(t.numel() * t.element_size() for _, t in named)
    for receiver in receivers:
        staged = receiver.join(30)
        assert receiver.state == "received"
        assert list(staged) == [name for name, _ in named]
        for name, tensor in named:
            assert torch.equal(staged[name], tensor)
    sender.close()


def _multi_source_begin(senders: list[WeightSender], version: int, rank_offset: int, world_size: int
                        ) -> WeightSyncBegin:
    return WeightSyncBegin(version=version, sources=[s.source() for s in senders], world_size=world_size,
                           rank_offset=rank_offset, timeout_s=30)


def _send_all(senders: list[WeightSender], parts: list[list[tuple[str, torch.Tensor]]], version: int,
              world_size: int) -> list[BaseException]:
    """Every sender broadcasts its part at the same time (as pipeline stages do); returns their errors."""
    errors: list[BaseException] = []

    def send(sender: WeightSender, part: list[tuple[str, torch.Tensor]]) -> None:
        try:
            sender.send(part, version=version, world_size=world_size)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=pair) for pair in zip(senders, parts, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return errors


def test_two_senders_each_send_their_stage_and_replicas_install_the_union() -> None:
    named = _tensors()
    parts = [named[:2], named[2:]]  # stage 0 and stage 1 of a PP=2 learner
    senders = [WeightSender(master_addr=LOOPBACK, bucket_bytes=64, group_name=f"stage{i}", timeout_s=30)
               for i in range(2)]
    required = {name for name, _ in named}
    receivers = [WeightReceiver(_multi_source_begin(senders, 5, rank, 3), required=required).start()
                 for rank in (1, 2)]
    assert _send_all(senders, parts, version=5, world_size=3) == []
    for receiver in receivers:
        staged = receiver.join(30)
        assert set(staged) == required
        for name, tensor in named:
            assert torch.equal(staged[name], tensor)


def test_a_name_sent_by_two_senders_fails_the_sync() -> None:
    named = _tensors()
    senders = [WeightSender(master_addr=LOOPBACK, group_name=f"dup{i}", timeout_s=30) for i in range(2)]
    receiver = WeightReceiver(_multi_source_begin(senders, 1, 1, 2)).start()
    assert _send_all(senders, [named[:3], named[2:]], version=1, world_size=2) == []
    with pytest.raises(RuntimeError, match=r"two senders: \['c.steps'\]"):
        receiver.join(30)
    assert receiver.staged == {}


def test_a_stage_that_sends_nothing_leaves_required_names_missing() -> None:
    named = _tensors()
    senders = [WeightSender(master_addr=LOOPBACK, group_name=f"miss{i}", timeout_s=30) for i in range(2)]
    receiver = WeightReceiver(_multi_source_begin(senders, 2, 1, 2), required={n for n, _ in named}).start()
    assert _send_all(senders, [named[:4], []], version=2, world_size=2) == []
    with pytest.raises(RuntimeError, match="missing from the sync"):
        receiver.join(30)


def test_receiver_rejects_unknown_names_and_the_sender_sees_the_failure() -> None:
    named = _tensors()
    sender = WeightSender(master_addr=LOOPBACK, bucket_bytes=0, timeout_s=20)
    expected = {"a.weight": ParamSpec((3, 5), torch.float32)}
    (receiver,) = _receive_in_threads(sender, [1], version=1, expected=expected)
    errors: list[BaseException] = []

    def send() -> None:
        try:
            sender.send(named, version=1, world_size=2)
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    with pytest.raises(RuntimeError, match=r"unknown parameter name 'b.weight'"):
        receiver.join(30)
    assert receiver.state == "failed" and receiver.staged == {}
    thread.join(60)
    assert not thread.is_alive() and errors, "the sender must fail when a receiver drops out"


def test_hf_engine_staged_sync_installs_only_on_commit() -> None:
    model, _ = build_tiny_model()
    engine = HFEngine(model)
    learner, _ = tiny(1, "float32")
    sender = WeightSender(master_addr=LOOPBACK, bucket_bytes=4096, timeout_s=30)
    engine.begin_weight_sync(sender.begin_request(version=3, rank_offset=1, world_size=2))
    with pytest.raises(WeightSyncConflictError, match="still receiving"):
        engine.begin_weight_sync(sender.begin_request(version=4, rank_offset=1, world_size=2))
    sender.send(learner.named_parameters(), version=3, world_size=2)
    assert engine.weight_version == 0  # received but not installed
    assert not torch.equal(model.state_dict()["lm_head.weight"], learner.state_dict()["lm_head.weight"])
    with pytest.raises(WeightSyncConflictError, match="version 3, not 4"):
        engine.commit_weight_sync(4, timeout_s=10)
    engine.commit_weight_sync(3, timeout_s=30)
    assert engine.weight_version == 3 and engine.health().weight_sync == "idle"
    for name, tensor in learner.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    with pytest.raises(WeightSyncConflictError, match="no weight sync"):
        engine.commit_weight_sync(3, timeout_s=1)


def test_checkpoint_round_trip_and_engine_fallback(tmp_path) -> None:
    learner, _ = tiny(1, "float32")
    path = write_checkpoint(learner.named_parameters(), tmp_path / "ckpt")
    assert path.name == "model.safetensors" and not list((tmp_path / "ckpt").glob("*.tmp"))
    # Readable like any file this process writes (not mkstemp's 0600): other users load model directories.
    (tmp_path / "plain").write_bytes(b"")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    loaded = dict(iter_checkpoint_tensors(tmp_path / "ckpt"))
    assert set(loaded) == {name for name, _ in learner.named_parameters()}
    model, _ = build_tiny_model()
    engine = HFEngine(model)
    engine.load_checkpoint(str(tmp_path / "ckpt"), version=9)
    assert engine.weight_version == 9
    assert torch.equal(model.state_dict()["lm_head.weight"], learner.state_dict()["model.embed_tokens.weight"])
    with pytest.raises(FileNotFoundError, match="path"):
        engine.load_checkpoint(str(tmp_path / "nothing"), version=10)
    assert engine.weight_version == 9
