"""The same engine as a Ray actor in-process (local mode): generate, weight install, health."""

from __future__ import annotations

import pytest
import torch

from forkrl.rollout.config import RolloutServerConfig
from forkrl.rollout.hf_engine import HFEngine
from forkrl.rollout.types import GenerateRequest, GenerateResult
from tests.rollout.helpers import one_torch_thread, save_model, tiny

ray = pytest.importorskip("ray")


@pytest.mark.slow
def test_rollout_actor_generates_and_takes_weights(tmp_path) -> None:
    from forkrl.rollout.ray_actor import create_rollout_actor

    model_dir = save_model(tmp_path / "model")
    request = GenerateRequest(prompt_token_ids=tiny(0)[1]("9*9=").input_ids, n=2, max_new_tokens=6, seed=8)
    with one_torch_thread():
        expected = HFEngine.from_pretrained(model_dir).generate([request])[0]
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        config = RolloutServerConfig(model=str(model_dir), hf={"num_threads": 1})
        actor = create_rollout_actor(config)
        (raw,) = ray.get(actor.generate.remote([request.model_dump()]))
        result = GenerateResult.from_dict(raw)
        assert [s.token_ids for s in result.samples] == [s.token_ids for s in expected.samples]
        weights = [(name, tensor.detach().clone()) for name, tensor in tiny(1)[0].named_parameters()]
        assert ray.get(actor.update_weights.remote(weights, 4)) == 4
        health = ray.get(actor.health.remote())
        assert (health["engine"], health["weight_version"], health["sleeping"]) == ("hf", 4, False)
        (raw,) = ray.get(actor.generate.remote([request.model_dump()]))
        after = GenerateResult.from_dict(raw)
        assert {s.weight_version for s in after.samples} == {4}
        assert [s.token_ids for s in after.samples] != [s.token_ids for s in expected.samples]
        assert torch.isfinite(torch.tensor(after.samples[0].logprobs)).all()
    finally:
        ray.shutdown()
