"""Evaluation as ``cgrpo eval`` runs it: a recipe, a run, a checkpoint or a plain model ->
the recipe it is evaluated under -> built policy, prompts and benchmark sets -> the
metrics and generations, with everything needed to say what was measured (the model, each
benchmark's data and hash, the prompt settings and their hash, the sampling settings).

The critic is never built (evaluation never critiques), so an API critic needs no key.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cgrpo.errors import UsageError

# evaluation on; train.keep_best off (it names a training metric, and may name a benchmark
# that --benchmarks replaces); one process (an fsdp run's saved recipe is evaluated
# unsharded, from its HF weights)
EVAL_SETTINGS = ["eval.every=1", "train.keep_best=null", "distributed.strategy=ddp"]


def evaluate_target(
    target: str,
    overrides: list[str],
    model: str | None,
    limit: int | None,
    say: Callable[[str], None],
) -> tuple[dict[str, Any], list[Any]]:
    """(the eval.json report, the generations) of ``target`` under ``overrides``;
    ``limit`` cuts each benchmark to its first problems."""
    from transformers.utils import logging as hf_logging

    from cgrpo.app.build import build
    from cgrpo.plugins import get_registries

    recipe, source, weights = load_eval_recipe(target, [*EVAL_SETTINGS, *overrides], model)
    if source == "(defaults)" and not recipe.eval.benchmarks:
        raise UsageError(
            f"{target} is a model without a recipe: name --benchmarks (cgrpo list benchmark) "
            "or give a recipe with an eval section"
        )
    adapters = _use_weights(recipe, weights)
    hf_logging.disable_progress_bar()
    built = build(recipe, get_registries(), None, adapter_dir=adapters, evaluation_only=True)
    for s in built.eval_sets:
        s.problems = s.problems[:limit] if limit else s.problems
    started = time.time()
    result = _evaluate(built, recipe, say)
    report = _report(recipe, source, adapters, built.eval_sets, result.metrics, started)
    return report, result.generations


def _use_weights(recipe: Any, weights: Path | None) -> Path | None:
    """Point the recipe at the weights to evaluate; returns the LoRA adapters' directory
    when they are adapters (the base stays the recipe's model.path)."""
    if weights is None:
        return None
    directory, is_adapter = resolve_model(str(weights))
    if is_adapter:
        return directory
    recipe.model.path, recipe.model.create = str(directory), None
    return None


def _evaluate(built: Any, recipe: Any, say: Callable[[str], None]) -> Any:
    from cgrpo.train.evaluation import evaluate_sets
    from cgrpo.train.verify_pool import VerifyPool, auto_workers

    pool = VerifyPool(auto_workers(recipe.run.verify_workers))
    try:
        return evaluate_sets(
            built.policy,
            built.prompts,
            built.eval_sets,
            max_new_tokens=recipe.sampling.max_new_tokens,
            seed=recipe.run.seed,
            device=built.device,
            pool=pool,
            say=say,
        )
    finally:
        pool.close()
        close = getattr(built.policy, "close", None)
        if callable(close):
            close()


def _report(recipe, source, adapters, sets, metrics, started) -> dict[str, Any]:
    prompt = recipe.data.prompt.model_dump(mode="json")
    report = {
        "model": str(adapters or recipe.model.path),
        "base_model": recipe.model.path if adapters else None,
        "recipe": source,
        "policy_backend": recipe.policy.name,
        "prompt": prompt,
        "prompt_version": _hash(prompt),
        "max_new_tokens": recipe.sampling.max_new_tokens,
        "seed": recipe.run.seed,
        "problems": sum(len(s.problems) for s in sets),
        "sets": [_set_report(s, recipe, metrics) for s in sets],
        "metrics": metrics,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "host": platform.node(),
    }
    if len(sets) == 1 and not sets[0].name:  # the recipe's eval task: as before, flat
        first = report["sets"][0]
        report["data"], report["sampling"] = first["data"], first["sampling"]
        report["held_out_of_training_data"] = first["data"]["held_out_of_training_data"]
    return report


def resolve_model(path: str) -> tuple[Path, bool]:
    """``(directory, is_adapter_checkpoint)`` of a model directory, a checkpoint or a run
    directory (its newest complete checkpoint)."""
    from cgrpo.train.checkpoint import complete_checkpoints

    p = Path(path).expanduser()
    if (p / "checkpoints").is_dir():
        found = complete_checkpoints(p)
        if not found:
            raise UsageError(f"{p}: a run directory without a complete checkpoint")
        p = found[-1][1]
    if not p.is_dir():
        raise UsageError(f"{path}: not a directory (a model, a checkpoint or a run)")
    if (p / "dcp").is_dir() and not any(p.glob("*.safetensors")):
        raise UsageError(
            f"{p} holds fsdp shards only (intermediate checkpoints of an fsdp run); gather "
            f"them first: cgrpo export {p} --out DIR, then cgrpo eval DIR"
        )
    return p, (p / "adapter_config.json").is_file()


def _run_recipe(target: Path) -> Path | None:
    """The recipe saved by the run that holds ``target`` (a run or one of its checkpoints)."""
    for candidate in (target, target.parent.parent):
        if (candidate / "recipe.yaml").is_file() and (candidate / "checkpoints").is_dir():
            return candidate / "recipe.yaml"
    return None


def load_eval_recipe(
    target: str, overrides: list[str], model: str | None
) -> tuple[Any, str, Path | None]:
    """``(recipe, where it came from, weights)``: see the module docstring."""
    from omegaconf import OmegaConf

    from cgrpo.config import load_recipe
    from cgrpo.config.load import apply_overrides
    from cgrpo.config.validate import validate_recipe
    from cgrpo.plugins import get_registries

    registries = get_registries()
    path = Path(target).expanduser()
    if path.is_file():
        recipe, _ = load_recipe(path, overrides, registries=registries)
        return recipe, str(path), None if model is None else Path(model)
    if model is not None:
        raise UsageError("--model goes with a recipe; here the target is already the model")
    if not path.is_dir():
        raise UsageError(f"{target}: neither a recipe file nor a model, checkpoint or run")
    saved = _run_recipe(path)
    if saved is not None:
        recipe, _ = load_recipe(saved, overrides, registries=registries)
        return recipe, str(saved), path
    # a plain model: default prompt and sampling settings; data.task is required by the
    # schema but never read (benchmarks are required here, checked by the caller)
    base = OmegaConf.create({"model": {"path": str(path)}, "data": {"task": "arithmetic"}})
    raw = OmegaConf.to_container(apply_overrides(base, overrides, str(path)), resolve=True)
    return validate_recipe(raw, registries, source=str(path)), "(defaults)", path


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


SAMPLING_OPTIONS = ("k", "temperature", "top_p")  # recorded once, under "sampling"


def _set_report(s: Any, recipe: Any, metrics: dict[str, float]) -> dict[str, Any]:
    """One set's entry in eval.json: its name and metrics' prefix, the metrics computed
    and what its ``score`` is, its data and verifier, and the sampling actually used
    (which of it the recipe's eval section or --k/--temperature set)."""
    description = dict(s.description or _task_description(recipe))
    if isinstance(description.get("options"), dict):  # a preset's k is not the k used
        description["options"] = {k: v for k, v in description["options"].items()
                                   if k not in SAMPLING_OPTIONS}  # fmt: skip
    prefix = s.key("")
    overridden = [f"eval.{n}" for n in SAMPLING_OPTIONS if getattr(recipe.eval, n) is not None]
    return {
        "name": s.name or "eval",
        "metric_prefix": prefix,  # eval/ for the recipe's eval task, eval/<name>/ else
        "metrics": sorted(
            k[len(prefix) :]
            for k in metrics
            if k.startswith(prefix) and "/" not in k[len(prefix) :]
        ),
        "score": s.score_metric,
        "category": s.category,
        "problems": len(s.problems),
        "data": description,
        "verifier": {"name": s.verifier_spec[0], "options": s.verifier_spec[1]},
        "sampling": {
            "greedy": True,
            "k": s.k,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "set_by": overridden or ["benchmark" if s.name else "defaults"],
        },
    }


def _task_description(recipe: Any) -> dict[str, Any]:
    """The recipe's evaluation task (eval.task, or data.task's held-out problems)."""
    from cgrpo.builtins.benchmarks.sources import sha256_of

    spec = recipe.eval.task or recipe.data.task
    out: dict[str, Any] = {"task": spec.name, "options": spec.options,
                           "held_out_of_training_data": recipe.eval.task is None}  # fmt: skip
    path = (spec.options or {}).get("path")
    if path and Path(path).expanduser().is_file():
        out["sha256"] = sha256_of([Path(path).expanduser()])
    return out
