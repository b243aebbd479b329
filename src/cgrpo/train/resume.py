"""Where a run starts: fresh, or from a checkpoint (``resume=auto`` / ``resume=PATH``).

Resuming restores weights, optimizer, scheduler, RNG states, data position, step, the
critic's spend, and cuts ``metrics.jsonl`` / ``samples.jsonl`` / ``timeline.jsonl``
back to the checkpoint's step so no step appears twice. A recipe that differs from the
one the run was started with is reported key by key; the user decides with
``run.allow_recipe_change=true``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cgrpo.errors import ConfigIssue, RecipeError, TrainingError
from cgrpo.train.checkpoint import complete_checkpoints, is_complete

# keys that may differ between the original and the resumed run
_VOLATILE = {"resume", "run.overwrite", "run.allow_recipe_change", "run.console"}
LOGS = ("metrics.jsonl", "samples.jsonl", "timeline.jsonl")
SFT_METRICS = "sft_metrics.jsonl"  # the warm-up's own steps


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: data}


def recipe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every setting that differs (volatile keys ignored)."""
    a, b = _flatten(old), _flatten(new)
    changed = []
    for key in sorted(set(a) | set(b)):
        if key in _VOLATILE or a.get(key) == b.get(key):
            continue
        changed.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
    return changed


def choose_start(recipe: Any, resolved: dict[str, Any], run_dir: Path, source: str) -> Path | None:
    """The checkpoint to resume from (None: start fresh), after preparing ``run_dir``."""
    resume = recipe.resume
    if resume is None:
        if run_dir.exists() and any(run_dir.iterdir()):
            if not recipe.run.overwrite:
                raise RecipeError(
                    [
                        ConfigIssue(
                            "run.name",
                            f"run directory {run_dir} already exists and is not empty",
                            "continue it with resume=auto, choose another name (run.name=...), set "
                            f"run.overwrite=true, or remove {run_dir}",
                        )
                    ],
                    source,
                )
            shutil.rmtree(run_dir)
        return None
    if resume == "auto":
        # a run's own checkpoints, else its warm-up's (killed before RL checkpointed)
        found = complete_checkpoints(run_dir) or complete_checkpoints(run_dir, warmup=True)
        if not found:
            if run_dir.exists():  # killed before its first checkpoint: start over cleanly
                shutil.rmtree(run_dir)
            return None
        ckpt = found[-1][1]
    else:
        ckpt = Path(resume).expanduser()
        if not is_complete(ckpt):
            known = ", ".join(str(p) for _, p in complete_checkpoints(run_dir)) or "none"
            raise RecipeError(
                [
                    ConfigIssue(
                        "resume",
                        f"{ckpt} is not a complete checkpoint (no manifest, or files missing)",
                        f"use resume=auto or one of: {known}",
                    )
                ],
                source,
            )
    saved = run_dir / "recipe.yaml"
    if saved.is_file():
        old = OmegaConf.to_container(OmegaConf.load(saved))
        changes = recipe_changes(old, resolved)  # type: ignore[arg-type]
        if changes and not recipe.run.allow_recipe_change:
            raise RecipeError(
                [
                    ConfigIssue(
                        "resume",
                        "the recipe differs from the one this run was started with:\n        "
                        + "\n        ".join(changes),
                        "undo the changes, or accept them with run.allow_recipe_change=true",
                    )
                ],
                source,
            )
    return ckpt


def cut_logs(run_dir: Path, step: int, names: tuple[str, ...] = LOGS) -> None:
    """Drop log lines of steps after ``step`` (they are trained again after resuming)."""
    for name in names:
        path = run_dir / name
        if not path.is_file():
            continue
        kept = [
            line
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        tmp.replace(path)


def check_disk(run_dir: Path, model: Any) -> None:
    """Fail before training when the disk cannot hold a checkpoint (weights + Adam)."""
    need = sum(p.numel() * p.element_size() for p in model.parameters()) * 3
    need += sum(p.numel() * 4 for p in model.parameters())  # Adam state is float32-or-wider
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise TrainingError(
            f"only {free / 2**30:.2f} GiB free under {run_dir}, a checkpoint needs about "
            f"{need / 2**30:.2f} GiB; free space or set run.output_dir elsewhere"
        )
