"""The RLVR controller: the training loop over the learner, rollout replicas and the verifier."""
