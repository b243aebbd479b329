"""LoRA adapters through peft: train a few million parameters on a frozen base.

What is kept in which precision: the frozen base weights in the compute dtype
(``model.dtype``: bf16 on GPU, 2 bytes per parameter and no gradients or optimizer state),
the adapters in float32 (peft upcasts them), with their gradients and AdamW state. So
Qwen3-8B fits one 80 GB GPU: 16.4 GB of frozen bf16 weights, well under 1 GB of adapters
and their optimizer state.

Checkpoints hold the adapters only (``adapter_model.safetensors`` + ``adapter_config.json``,
loadable with peft on top of the base model); resume loads the base from ``model.path`` and
the adapters from the checkpoint. The KL reference, when ``kl_coef > 0``, is the same model
with its adapters disabled, not a second copy. A vLLM engine receives the merged weights
(:func:`merged_weights`) after every update.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ADAPTER_CONFIG = "adapter_config.json"


def is_lora(model: Any) -> bool:
    """True for a peft model with LoRA adapters."""
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def attach_lora(model: Any, spec: Any, adapter_dir: str | Path | None = None, seed: int = 0) -> Any:
    """``model`` wrapped with trainable LoRA adapters: new ones from ``spec`` (a
    :class:`cgrpo.config.schema.LoraSpec`), initialised from ``seed`` (two runs with the
    same seed start from the same adapters), or the ones saved in ``adapter_dir``."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter_dir is not None:
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


@contextlib.contextmanager
def adapters_disabled(model: Any) -> Iterator[None]:
    """Run the base model: inside, a LoRA model computes without its adapters (the KL
    reference); any other model is left as it is."""
    if not is_lora(model):
        yield
        return
    with model.disable_adapter():
        yield


def trainable_summary(model: Any) -> str:
    """'1.2M of 494.0M parameters trainable' (for the console)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"{trainable / 1e6:.2f}M of {total / 1e6:.1f}M parameters trainable"


def merged_weights(model: Any) -> list[tuple[str, Any]]:
    """``(transformers name, tensor)`` of every base weight with the LoRA adapters merged
    in, ``W + (alpha / r) B A`` computed in float32 and cast to the base weight's dtype:
    what a separate inference engine (vLLM) loads after each update. ``model`` itself is
    left unchanged (no merge/unmerge round trip that would round the frozen base)."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    adapter = model.active_adapter
    deltas = {
        name: module.get_delta_weight(adapter)
        for name, module in base.named_modules()
        if isinstance(module, LoraLayer) and adapter in module.lora_A
    }
    out = []
    for name, tensor in base.state_dict().items():
        if ".lora_" in name:
            continue
        plain = name.replace(".base_layer.", ".")
        module = plain.rsplit(".", 1)[0]
        if plain.endswith(".weight") and module in deltas:
            tensor = (tensor.float() + deltas[module].float()).to(tensor.dtype)
        out.append((plain, tensor.detach()))
    return out
