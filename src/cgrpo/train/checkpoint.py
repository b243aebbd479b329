"""Checkpoints: HF weights loadable by plain transformers, plus the trainer state.

Layout: ``RUN_DIR/checkpoints/step-N/`` with ``config.json``, ``model.safetensors``,
the tokenizer files, ``trainer_state.pt`` (optimizer, scheduler, step, data position,
RNG states) and ``manifest.json`` written last. Under FSDP the model and optimizer are
in ``dcp/`` (sharded, :func:`save_sharded_checkpoint`) and ``model.safetensors`` is
written at the end of a run (a warm-up's sharded checkpoints hold only the shards). A
checkpoint is written under a temporary name and renamed into place only when complete,
so a directory named ``step-N`` with a manifest is always whole. Warm-up checkpoints
(``sft.save_every``) have the same layout under ``checkpoints/sft/step-N`` (N counts
warm-up steps); only the newest is kept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from cgrpo.errors import TrainingError
from cgrpo.model.faults import CRASH_ENV, maybe_crash  # noqa: F401 (the loop's crash points)
from cgrpo.model.sharding import is_sharded
from cgrpo.model.shards import DCP_DIR, save_shards, tied_duplicates

MANIFEST = "manifest.json"
STATE = "trainer_state.pt"
SFT_DIR = "sft"  # checkpoints/sft/: the warm-up's own


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict[str, Any]:
    import numpy as np

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_trainer_state(path: Path) -> dict[str, Any]:
    """The trainer state of a checkpoint directory (our own file: not weights-only)."""
    return torch.load(path / STATE, map_location="cpu", weights_only=False)


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: Any,
    tokenizer: Any,
    trainer_state: dict[str, Any],
    warmup: bool = False,
) -> Path:
    """Write ``checkpoints/step-{step}`` (``checkpoints/sft/step-{step}`` for the warm-up)
    atomically and return its path."""
    root = run_dir / "checkpoints" / (SFT_DIR if warmup else "")
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    maybe_crash("checkpoint", step)
    torch.save({**trainer_state, "step": step, "rng": rng_state()}, tmp / STATE)
    return _publish(tmp, root, step)


def _publish(tmp: Path, root: Path, step: int) -> Path:
    """fsync what ``tmp`` holds, write its manifest last and rename it to ``step-N``."""
    final = root / f"step-{step}"
    files = sorted(p.name for p in tmp.iterdir())
    for path in tmp.rglob("*"):  # data on disk before the manifest says the checkpoint is whole
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    (tmp / MANIFEST).write_text(
        json.dumps({"step": step, "files": files, "time": time.time(), "format": 1}, indent=1)
    )
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for stale in root.glob(".tmp-step-*"):  # left by a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    return final


def save_sharded_checkpoint(
    run_dir: Path,
    step: int,
    model: Any,
    optimizer: Any,
    tokenizer: Any,
    trainer_state: dict[str, Any],
    hf_weights: bool,
    warmup: bool = False,
) -> Path:
    """The FSDP checkpoint, written by every rank together (collective); a warm-up's under
    ``checkpoints/sft/`` with ``warmup``.

    ``dcp/`` holds the model and the optimizer state as ``torch.distributed.checkpoint``
    shards (each rank writes its own; a later run may load them on another number of
    ranks); rank 0 adds the config, tokenizer and trainer state and, with ``hf_weights``,
    the full float32 weights as ``model.safetensors`` (gathered to rank 0's CPU), so the
    checkpoint loads in plain transformers. The run directory must be on a filesystem
    every rank sees (one machine, or a shared filesystem)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from cgrpo.model import distributed

    root = run_dir / "checkpoints" / (SFT_DIR if warmup else "")
    tmp = root / f".tmp-step-{step}"
    if distributed.is_main():
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    distributed.barrier()
    save_shards(tmp / DCP_DIR, model, optimizer)
    full = None
    if hf_weights:
        full = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    if distributed.is_main():
        if full is not None:
            for name in tied_duplicates(model):  # saved once, as transformers does
                full.pop(name, None)
            model.save_pretrained(tmp, state_dict=full, safe_serialization=True)
        else:
            model.config.save_pretrained(tmp)
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        maybe_crash("checkpoint", step)
        torch.save({**trainer_state, "step": step, "rng": rng_state()}, tmp / STATE)
        _publish(tmp, root, step)
    distributed.barrier()
    return root / f"step-{step}"


def load_sharded_state(checkpoint: Path | None, model: Any, optimizer: Any) -> None:
    """Load a sharded model and its optimizer from ``checkpoint``'s shards (collective), or
    say why they cannot come from there."""
    from cgrpo.model.shards import is_sharded_checkpoint, load_sharded_checkpoint

    if checkpoint is None or not is_sharded_checkpoint(Path(checkpoint)):
        raise TrainingError(f"the checkpoint {checkpoint} holds no optimizer state")
    if not is_sharded(model):
        raise TrainingError(
            f"{checkpoint} was written by an fsdp run; resume it with distributed.strategy=fsdp"
        )
    load_sharded_checkpoint(Path(checkpoint), model, optimizer)


def is_complete(path: Path) -> bool:
    """True when ``path`` holds a manifest and every file it lists."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return False
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError):
        return False
    return all((path / f).exists() for f in files)


def is_warmup_checkpoint(path: Path) -> bool:
    """True for a checkpoint of the warm-up (``checkpoints/sft/step-N``)."""
    return Path(path).resolve().parent.name == SFT_DIR


def complete_checkpoints(run_dir: Path, warmup: bool = False) -> list[tuple[int, Path]]:
    """``(step, path)`` of every complete checkpoint of a run (of its warm-up with
    ``warmup``), oldest first."""
    root = run_dir / "checkpoints" / (SFT_DIR if warmup else "")
    found = []
    for path in root.glob("step-*") if root.is_dir() else []:
        suffix = path.name.removeprefix("step-")
        if suffix.isdigit() and is_complete(path):
            found.append((int(suffix), path))
    return sorted(found)


def prune_checkpoints(run_dir: Path, keep_last: int | None, keep: set[int] = frozenset()) -> None:
    """Delete all but the newest ``keep_last`` checkpoints, sparing the steps in ``keep``."""
    if keep_last is None:
        return
    ckpts = complete_checkpoints(run_dir)
    for step, path in ckpts[: max(0, len(ckpts) - keep_last)]:
        if step not in keep:
            shutil.rmtree(path, ignore_errors=True)
