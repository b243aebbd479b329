"""Sharded (FSDP) model state on disk: ``torch.distributed.checkpoint`` shards of the model
and optimizer, read back into a sharded model, or gathered into a plain one in a single
process. The training checkpoint (train/checkpoint.py) and the KL reference
(model/reference.py) store their sharded weights through these."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

DCP_DIR = "dcp"  # sharded (FSDP) model and optimizer state, inside a checkpoint


def tied_duplicates(model: Any) -> list[str]:
    """Names of parameters that are another name's parameter (tied embeddings): a gathered
    state dict holds them as separate copies."""
    seen: set[int] = set()
    out = []
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            out.append(name)
        seen.add(id(param))
    return out


def is_sharded_checkpoint(path: Path) -> bool:
    return (path / DCP_DIR).is_dir()


def _shard_state(model: Any, optimizer: Any = None) -> dict[str, Any]:
    """This rank's shards of the model (and optimizer) state, as DCP saves and loads them."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    state = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optimizer"] = get_optimizer_state_dict(model, optimizer)
    return state


def save_shards(where: Path, model: Any, optimizer: Any = None) -> None:
    """Write a sharded model's state (and its optimizer's) to ``where`` with
    ``torch.distributed.checkpoint``; every rank writes its own shards (collective)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_shard_state(model, optimizer), checkpoint_id=str(where))


def load_shards(where: Path, model: Any, optimizer: Any = None) -> None:
    """Load what :func:`save_shards` wrote into a sharded model (and optimizer)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    state = _shard_state(model, optimizer)
    dcp.load(state, checkpoint_id=str(where))
    set_model_state_dict(model, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optimizer"])


def load_sharded_checkpoint(path: Path, model: Any, optimizer: Any) -> None:
    """Load the model and optimizer shards of checkpoint ``path`` (collective)."""
    load_shards(path / DCP_DIR, model, optimizer)


def load_full_weights(path: Path, model: Any) -> None:
    """Load the full weights of sharded checkpoint ``path`` into an unsharded ``model``, in
    one process (no process group): for ``cgrpo export`` of a checkpoint written without
    ``model.safetensors``."""
    import torch.distributed.checkpoint as dcp

    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": yes
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=str(path / DCP_DIR), no_dist=True)
    model.load_state_dict(state["model"])
