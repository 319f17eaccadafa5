"""Megatron learner: TP x PP x DP policy training with the entropy-aware objectives."""
