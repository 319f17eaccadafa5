"""forkrl.rollout."""
