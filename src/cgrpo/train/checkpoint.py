"""Checkpoints: HF weights loadable by plain transformers, plus the trainer state.

Layout: ``RUN_DIR/checkpoints/step-N/`` with ``config.json``, ``model.safetensors``,
the tokenizer files, ``trainer_state.pt`` (optimizer, scheduler, step, data position,
RNG states) and ``manifest.json`` written last. A checkpoint is written under a temporary
name and renamed into place only when complete, so a directory named ``step-N`` with a
manifest is always whole.
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

MANIFEST = "manifest.json"
STATE = "trainer_state.pt"


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


def save_checkpoint(
    run_dir: Path, step: int, model: Any, tokenizer: Any, trainer_state: dict[str, Any]
) -> Path:
    """Write ``checkpoints/step-{step}`` atomically and return its path."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    torch.save({**trainer_state, "step": step, "rng": rng_state()}, tmp / STATE)
    files = sorted(p.name for p in tmp.iterdir())
    (tmp / MANIFEST).write_text(
        json.dumps({"step": step, "files": files, "time": time.time(), "format": 1}, indent=1)
    )
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


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
