"""Tests of the Megatron learner (forkrl.trainer.learner)."""
