"""``cgrpo eval``: evaluate a model, a checkpoint or a run's newest checkpoint on named
benchmarks or on a recipe's evaluation problems, as training would (same prompts,
verifiers, sampling code).

The target is a recipe (its ``eval:`` section, ``--model`` for the weights), a run
directory (its saved recipe and newest checkpoint), a checkpoint (its run's recipe when it
sits in one) or a plain HF model directory (default prompt settings; needs
``--benchmarks``). Writes ``eval.json`` (every number; the model; each benchmark's data
with its file hash or dataset revision and template version; the prompt settings and
their hash; the sampling settings), ``eval.md`` (a table like the paper's) and
``generations.jsonl`` (every response with its verdict). The critic is never built
(evaluation never critiques), so an API critic needs no key here.
``cgrpo eval --compare A B`` puts two such results side by side.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path
from typing import Any

from cgrpo.errors import CgrpoError, UsageError


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


def benchmark_overrides(spec: str) -> list[str]:
    """``--benchmarks a,b=PATH`` as recipe overrides: each name, with a local copy when
    ``=PATH`` follows it."""
    items = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, path = part.partition("=")
        entry = {"name": name.strip()}
        if sep:
            entry["options"] = {"path": path.strip()}
        items.append(json.dumps(entry))
    if not items:
        raise UsageError("--benchmarks: name at least one benchmark (cgrpo list benchmark)")
    # the recipe's eval.task and eval.size were for its own evaluation problems (a run's
    # hold-out of 64 would otherwise cut every benchmark to 64); --limit cuts these
    return [f"eval.benchmarks=[{', '.join(items)}]", "eval.task=null", "eval.size=null"]


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


def run_eval(
    target: str,
    overrides: list[str],
    model: str | None,
    k: int | None,
    temperature: float | None,
    limit: int | None,
    out: str | None,
    benchmarks: str | None = None,
    backend: str | None = None,
    verify_workers: int | None = None,
) -> int:
    from transformers.utils import logging as hf_logging

    from cgrpo.app.build import build
    from cgrpo.plugins import get_registries
    from cgrpo.train.evaluation import evaluate_sets
    from cgrpo.train.verify_pool import VerifyPool, auto_workers

    # evaluation on and the backend first, so that the user's settings (policy.options...)
    # apply on top of them
    # train.keep_best off: it names a training metric, and may name a benchmark that
    # --benchmarks replaces (its check would refuse an evaluation it has nothing to do with)
    # one process: an fsdp run's saved recipe is evaluated unsharded (from its HF weights)
    settings = ["eval.every=1", "train.keep_best=null", "distributed.strategy=ddp"]
    settings += [f"policy={backend}"] if backend else []
    settings += overrides
    settings += benchmark_overrides(benchmarks) if benchmarks else []
    settings += [f"eval.k={k}"] if k is not None else []
    settings += [f"eval.temperature={temperature}"] if temperature is not None else []
    settings += [f"run.verify_workers={verify_workers}"] if verify_workers is not None else []
    recipe, source, weights = load_eval_recipe(target, settings, model)
    if source == "(defaults)" and not recipe.eval.benchmarks:
        raise UsageError(
            f"{target} is a model without a recipe: name --benchmarks (cgrpo list benchmark) "
            "or give a recipe with an eval section"
        )
    adapters = None
    if weights is not None:
        directory, is_adapter = resolve_model(str(weights))
        if is_adapter:
            adapters = directory  # the base stays the recipe's model.path
        else:
            recipe.model.path, recipe.model.create = str(directory), None
    hf_logging.disable_progress_bar()
    built = build(recipe, get_registries(), None, adapter_dir=adapters, evaluation_only=True)
    sets = built.eval_sets
    for s in sets:
        s.problems = s.problems[:limit] if limit else s.problems
    pool = VerifyPool(auto_workers(recipe.run.verify_workers))
    started = time.time()
    try:
        result = evaluate_sets(
            built.policy,
            built.prompts,
            sets,
            max_new_tokens=recipe.sampling.max_new_tokens,
            seed=recipe.run.seed,
            device=built.device,
            pool=pool,
            say=lambda line: print(f"cgrpo eval: {line}", flush=True),
        )
    finally:
        pool.close()
        close = getattr(built.policy, "close", None)
        if callable(close):
            close()
    model_name = str(adapters or recipe.model.path)
    target_dir = Path(out) if out else Path("eval") / Path(model_name).name
    target_dir.mkdir(parents=True, exist_ok=True)
    prompt = recipe.data.prompt.model_dump(mode="json")
    report = {
        "model": model_name,
        "base_model": recipe.model.path if adapters else None,
        "recipe": source,
        "policy_backend": recipe.policy.name,
        "prompt": prompt,
        "prompt_version": _hash(prompt),
        "max_new_tokens": recipe.sampling.max_new_tokens,
        "seed": recipe.run.seed,
        "problems": sum(len(s.problems) for s in sets),
        "sets": [_set_report(s, recipe) for s in sets],
        "metrics": result.metrics,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "host": platform.node(),
    }
    if len(sets) == 1 and not sets[0].name:  # the recipe's eval task: as before, flat
        first = report["sets"][0]
        report["data"], report["sampling"] = first["data"], first["sampling"]
        report["held_out_of_training_data"] = first["data"]["held_out_of_training_data"]
    (target_dir / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    with (target_dir / "generations.jsonl").open("w", encoding="utf-8") as fh:
        for line in result.generations:
            fh.write(json.dumps(line) + "\n")
    header, rows = results_table(report)
    (target_dir / "eval.md").write_text(
        f"# cgrpo eval: {model_name}\n\n" + markdown_table(header, rows) + "\n"
    )
    print_table(f"eval of {model_name}", header, rows)
    verify = result.metrics["time/eval_verify"]
    print(
        f"{report['problems']} problems in {result.metrics['time/eval']:.1f}s "
        f"({verify:.1f}s verifying)"
    )
    files = ", ".join(str(target_dir / n) for n in ("eval.json", "eval.md", "generations.jsonl"))
    print(f"cgrpo eval: {files}")
    return 0


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def _set_report(s: Any, recipe: Any) -> dict[str, Any]:
    description = s.description or _task_description(recipe)
    return {
        "name": s.name or "eval",
        "metric_prefix": s.key(""),  # eval/ for the recipe's eval task, eval/<name>/ else
        "category": s.category,
        "problems": len(s.problems),
        "data": description,
        "verifier": {"name": s.verifier_spec[0], "options": s.verifier_spec[1]},
        "sampling": {"greedy": True, "k": s.k, "temperature": s.temperature, "top_p": s.top_p},
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


def results_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per set (and the macro averages), the paper's headline ``score`` first;
    percentages with one decimal, as papers print them (eval.json keeps fractions)."""
    metrics = report["metrics"]
    header = [
        "benchmark",
        "n",
        "score",
        "greedy",
        "k",
        "avg@k",
        "pass@k",
        "maj@k",
        "length",
        "cut",
    ]  # fmt: skip  (cut: share of greedy responses cut at max_new_tokens)
    rows = []
    for s in report["sets"]:
        prefix = s["metric_prefix"]
        k = s["sampling"]["k"]

        def value(metric: str, prefix: str = prefix) -> str:
            v = metrics.get(prefix + metric)
            return "" if v is None else _pct(v)

        rows.append([
            s["name"], str(s["problems"]), value("score"), value("accuracy"), str(k),
            value(f"avg@{k}"), value(f"pass@{k}"), value(f"maj@{k}"),
            f"{metrics.get(prefix + 'length_mean', 0):.1f}", value("truncated_share"),
        ])  # fmt: skip
    for label, title in (("avg_math", "avg (math)"), ("avg", "avg (all)")):
        if f"eval/{label}/score" in metrics:
            score, greedy = (_pct(metrics[f"eval/{label}/{m}"]) for m in ("score", "accuracy"))
            rows.append([title, "", score, greedy, *[""] * 6])
    return header, rows


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        caption="scores and cut in %, length in tokens; eval.json has every number",
    )
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def run_compare(a: str, b: str, out: str | None) -> int:
    """Two ``cgrpo eval`` results side by side: per benchmark, score and greedy pass@1 of
    each and B - A."""
    reports = []
    for d in (a, b):
        path = Path(d).expanduser() / "eval.json"
        if not path.is_file():
            raise CgrpoError(f"{d}: no eval.json (a `cgrpo eval --out` directory)")
        reports.append(json.loads(path.read_text()))
    prefixes: dict[str, str] = {}  # row name -> its metrics' prefix, A's sets first
    for r in reports:
        for s in r["sets"]:
            prefixes.setdefault(s["name"], s["metric_prefix"])
    for label in ("avg_math", "avg"):
        if any(f"eval/{label}/score" in r["metrics"] for r in reports):
            prefixes[label] = f"eval/{label}/"
    header = ["benchmark", "score A", "score B", "delta", "pass@1 A", "pass@1 B", "delta"]
    rows = []
    for name, prefix in prefixes.items():
        row = [name]
        for metric in ("score", "accuracy"):
            key = prefix + metric
            va, vb = (r["metrics"].get(key) for r in reports)
            delta = "" if va is None or vb is None else f"{100 * (vb - va):+.1f}"
            row += ["-" if va is None else _pct(va), "-" if vb is None else _pct(vb), delta]
        rows.append(row)
    title = f"A = {reports[0]['model']}, B = {reports[1]['model']}"
    warn = []
    for field in ("prompt_version", "max_new_tokens", "policy_backend"):
        if reports[0].get(field) != reports[1].get(field):
            warn.append(f"{field} differs ({reports[0].get(field)} vs {reports[1].get(field)})")
    print_table(title, header, rows)
    for line in warn:
        print(f"! {line}: the numbers may not be comparable")
    if out:
        target = Path(out)
        target.mkdir(parents=True, exist_ok=True)
        notes = "".join(f"\n! {line}\n" for line in warn)
        (target / "compare.md").write_text(f"# {title}\n\n{markdown_table(header, rows)}{notes}")
        print(f"cgrpo eval --compare: {target / 'compare.md'}")
    return 0
