"""``cgrpo export``: a checkpoint as plain transformers weights, ready for vLLM or the hub.

A LoRA checkpoint (adapters only) is merged into its base model; a full checkpoint (float32
master weights) is written as is; an fsdp checkpoint without ``model.safetensors`` (all but
the last of a sharded run) has its shards read back into one model. Any merge happens in
float32, and the result is cast once to ``--dtype`` (bfloat16 by default: half the size,
what inference uses).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cgrpo.model.lora import ADAPTER_CONFIG
from cgrpo.model.shards import is_sharded_checkpoint, load_full_weights
from cgrpo.train.checkpoint import complete_checkpoints, is_complete

EXIT_OK, EXIT_USAGE = 0, 2


def _usage(message: str) -> int:
    print(f"cgrpo export: {message}", file=sys.stderr)
    return EXIT_USAGE


def resolve_checkpoint(source: Path) -> Path | None:
    """A complete checkpoint directory: ``source`` itself, or a run's newest one."""
    if is_complete(source):
        return source
    found = complete_checkpoints(source)
    return found[-1][1] if found else None


def run_export(source: str, out: str, dtype: str, base: str | None) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = resolve_checkpoint(Path(source))
    if ckpt is None:
        return _usage(
            f"{source} is neither a complete checkpoint (checkpoints/step-N with a "
            "manifest) nor a run directory that holds one"
        )
    target = Path(out)
    if target.exists() and any(target.iterdir()):
        return _usage(f"{out} exists and is not empty; choose a new --out directory")
    adapter_config = ckpt / ADAPTER_CONFIG
    if adapter_config.is_file():
        from peft import PeftModel

        base = base or json.loads(adapter_config.read_text()).get("base_model_name_or_path")
        if not base or not Path(base).is_dir():
            return _usage(
                f"the LoRA checkpoint {ckpt} names its base model as {base!r}, which is not a "
                "directory here; pass --base with the base model's directory"
            )
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        model = PeftModel.from_pretrained(model, str(ckpt)).merge_and_unload()
        what = f"LoRA adapters of {ckpt} merged into {base}"
    elif is_sharded_checkpoint(ckpt) and not (ckpt / "model.safetensors").is_file():
        from cgrpo.model.loading import uninitialised_model

        model = uninitialised_model(str(ckpt), torch.float32, trust_remote_code=False)
        load_full_weights(ckpt, model)  # the fsdp shards, read in this one process
        what = f"sharded weights of {ckpt}"
    else:
        model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
        what = f"weights of {ckpt}"
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(target, safe_serialization=True)
    AutoTokenizer.from_pretrained(ckpt).save_pretrained(target)
    print(f"cgrpo export: {what} -> {target} ({dtype})")
    return EXIT_OK
