"""The composition root: a validated recipe -> built components -> a running trainer,
and the run's phases in order (warm-up, RL, final evaluation)."""
