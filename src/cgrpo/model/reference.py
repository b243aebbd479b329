"""The KL reference model (``algorithm.loss.kl_coef > 0``): the policy as the RL stage
starts, frozen.

"As it starts" means after the SFT warm-up, not the weights in ``model.path``; and a
resumed run must use the same reference as the uninterrupted one, not the checkpoint's
weights. So the reference is written once to ``RUN_DIR/reference/`` before the first
step and read back on resume (compute dtype: 16.4 GB for an 8B model in bf16; sharded
under FSDP).

A LoRA policy needs none of this: its reference is the base model with the adapters
disabled, which never changes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from cgrpo.errors import TrainingError
from cgrpo.model.sharding import is_sharded
from cgrpo.model.shards import load_shards, save_shards

DIRNAME = "reference"
WEIGHTS = "model.safetensors"


def make_reference(model: Any, precision: Any) -> Any:
    """A frozen compute-dtype copy of ``model`` (made before sharding), or for a LoRA
    policy the policy itself (its adapters are disabled for the reference forward)."""
    from cgrpo.model.lora import is_lora
    from cgrpo.model.precision import frozen_copy

    return model if is_lora(model) else frozen_copy(model, precision)


def copies_weights(ref: Any, model: Any) -> bool:
    """True when ``ref`` is a separate copy (not a LoRA policy's adapter-disabled self)."""
    return ref is not None and ref is not model


def refresh_reference(ref: Any, model: Any) -> None:
    """Copy ``model``'s current weights into the reference (after the SFT warm-up). Both
    sharded alike under FSDP, so each rank copies its own shards."""
    if not copies_weights(ref, model):
        return
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import (
            get_model_state_dict,
            set_model_state_dict,
        )

        set_model_state_dict(ref, get_model_state_dict(model))
        return
    with torch.no_grad():
        ref.load_state_dict(model.state_dict())


def save_reference(run_dir: Path, ref: Any, model: Any) -> None:
    """Write the reference to ``RUN_DIR/reference/`` (collective under FSDP)."""
    if not copies_weights(ref, model):
        return
    from cgrpo.model import distributed

    final = run_dir / DIRNAME
    tmp = run_dir / f".tmp-{DIRNAME}"
    if distributed.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    distributed.barrier()
    if is_sharded(ref):
        save_shards(tmp, ref)
    elif distributed.is_main():
        from safetensors.torch import save_model

        save_model(ref, str(tmp / WEIGHTS))  # tied weights are stored once
    if distributed.is_main():
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    distributed.barrier()


def load_reference(run_dir: Path, ref: Any, model: Any) -> None:
    """Load ``RUN_DIR/reference/`` into ``ref`` (a resumed run; collective under FSDP)."""
    if not copies_weights(ref, model):
        return
    where = run_dir / DIRNAME
    if not where.is_dir():
        raise TrainingError(
            f"{where} is missing: a run with algorithm.loss.kl_coef > 0 keeps its KL "
            "reference there, and resuming without it would measure KL against the "
            "checkpoint instead. Start the run again (run.overwrite=true)"
        )
    if is_sharded(ref):
        load_shards(where, ref)
        return
    from safetensors.torch import load_model

    load_model(ref, str(where / WEIGHTS))
