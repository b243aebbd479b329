"""``cgrpo eval``: evaluate a model, a checkpoint or a run's newest checkpoint on the
recipe's evaluation problems, as training would (same prompts, verifier, hold-out split).

Writes ``eval.json`` (every number; the model; the data with a file hash; the prompt
settings and their hash; the sampling settings), ``eval.md`` (a table) and
``generations.jsonl`` (every response with its verdict). The recipe's critic is not
built (evaluation never critiques), so an API critic needs no key here.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path
from typing import Any

from cgrpo.errors import CgrpoError


def resolve_model(path: str) -> tuple[Path, bool]:
    """``(directory, is_adapter_checkpoint)`` of a model directory, a checkpoint or a run
    directory (its newest complete checkpoint)."""
    from cgrpo.train.checkpoint import complete_checkpoints

    p = Path(path).expanduser()
    if (p / "checkpoints").is_dir():
        found = complete_checkpoints(p)
        if not found:
            raise CgrpoError(f"{p}: a run directory without a complete checkpoint")
        p = found[-1][1]
    if not p.is_dir():
        raise CgrpoError(f"--model {path}: not a directory (a model, a checkpoint or a run)")
    return p, (p / "adapter_config.json").is_file()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _data_description(spec: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"task": spec.name, "options": spec.options}
    path = (spec.options or {}).get("path")
    if path and Path(path).expanduser().is_file():
        out["sha256"] = _sha256(Path(path).expanduser())
    return out


def run_eval(
    recipe_path: str,
    overrides: list[str],
    model: str | None,
    k: int | None,
    temperature: float | None,
    limit: int | None,
    out: str | None,
) -> int:
    from rich.console import Console
    from rich.table import Table

    from cgrpo.evaluation import evaluate_problems
    from cgrpo.plugins import get_registries
    from cgrpo.recipe import load_recipe
    from cgrpo.recipe.schema import ComponentSpec

    # evaluation on: the eval section's settings apply (the user's overrides come after)
    extra = [f"eval.k={k}"] if k is not None else []
    if temperature is not None:
        extra.append(f"eval.temperature={temperature}")
    registries = get_registries()
    settings = ["eval.every=1", *overrides, *extra]
    recipe, _ = load_recipe(recipe_path, settings, registries=registries)
    adapters = None
    if model is not None:
        directory, is_adapter = resolve_model(model)
        if is_adapter:
            adapters = directory  # the base stays the recipe's model.path
        else:
            recipe.model.path, recipe.model.create = str(directory), None
    recipe.critic = ComponentSpec(name="ground_truth")  # evaluation never critiques
    from transformers.utils import logging as hf_logging

    from cgrpo.recipe.build import build

    hf_logging.disable_progress_bar()
    built = build(recipe, registries, None, adapter_dir=adapters)
    problems = built.eval_problems[:limit] if limit else built.eval_problems
    ev = recipe.eval
    started = time.time()
    result = evaluate_problems(
        built.policy,
        built.verifier,
        built.prompts,
        problems,
        max_new_tokens=recipe.sampling.max_new_tokens,
        k=ev.k,
        temperature=ev.temperature,
        top_p=ev.top_p,
        seed=recipe.run.seed,
        device=built.device,
    )
    target = Path(out) if out else Path("eval") / Path(recipe.model.path).name
    target.mkdir(parents=True, exist_ok=True)
    prompt = recipe.data.prompt.model_dump(mode="json")
    report = {
        "model": str(adapters or recipe.model.path),
        "base_model": recipe.model.path if adapters else None,
        "recipe": recipe_path,
        "data": _data_description(ev.task or recipe.data.task),
        "held_out_of_training_data": ev.task is None,
        "problems": len(problems),
        "prompt": prompt,
        "prompt_version": hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).hexdigest()[
            :12
        ],
        "sampling": {
            "greedy": True,
            "k": ev.k,
            "temperature": ev.temperature,
            "top_p": ev.top_p,
            "max_new_tokens": recipe.sampling.max_new_tokens,
            "seed": recipe.run.seed,
        },
        "policy_backend": recipe.policy.name,
        "verifier": {"name": recipe.verifier.name, "options": recipe.verifier.options},
        "metrics": result.metrics,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "host": platform.node(),
    }
    (target / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    with (target / "generations.jsonl").open("w", encoding="utf-8") as fh:
        for line in result.generations:
            fh.write(json.dumps(line) + "\n")
    names = [k for k in result.metrics if k.startswith("eval/")]
    (target / "eval.md").write_text(
        f"# cgrpo eval: {report['model']}\n\n| metric | value |\n|---|---|\n"
        + "".join(f"| {n[5:]} | {result.metrics[n]:.4g} |\n" for n in names)
    )
    table = Table(title=f"eval of {report['model']} on {len(problems)} problems")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for n in names:
        table.add_row(n[5:], f"{result.metrics[n]:.4g}")
    Console().print(table)
    files = ", ".join(str(target / n) for n in ("eval.json", "eval.md", "generations.jsonl"))
    print(f"cgrpo eval: {files}")
    close = getattr(built.policy, "close", None)
    if callable(close):
        close()
    return 0
