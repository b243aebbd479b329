"""Model mechanics: loading, precision, attention, LoRA, sharding, log-probs, prompts,
the KL reference, the memory plan and the torch.distributed helpers."""
