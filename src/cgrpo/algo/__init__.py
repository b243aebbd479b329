"""The algorithm's math: advantages, losses, mixing, selection, shaping and pass@k.

Pure functions on tensors and plain data: no I/O, no torch.distributed, no model. Each has
worked-number tests (tests/unit)."""
