"""The training loop and its state: rollout, update, evaluation, verification pool,
checkpoints, resume, metrics, observers and the SFT warm-up."""
