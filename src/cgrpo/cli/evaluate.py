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

import json
import sys
from pathlib import Path
from typing import Any

from cgrpo.errors import CgrpoError, UsageError


def benchmark_overrides(spec: str, known: list[str] | None = None) -> list[str]:
    """``--benchmarks a,b=PATH`` as recipe overrides: each name, with a local copy when
    ``=PATH`` follows it. A name not in ``known`` (the registered benchmarks) or an empty
    path is the argument's error, not the recipe's."""
    from cgrpo.registry import closest

    items = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, path = (x.strip() for x in part.partition("="))
        if known is not None and name not in known:
            guess = closest(name, known)
            hint = f"did you mean {guess!r}? " if guess else ""
            raise UsageError(f"--benchmarks: unknown benchmark {name!r}; {hint}available: "
                             f"{', '.join(sorted(known))}")  # fmt: skip
        if sep and not path:
            raise UsageError(f"--benchmarks: {name}= names no path; write {name}=PATH or {name}")
        entry: dict[str, Any] = {"name": name}
        if sep:
            entry["options"] = {"path": path}
        items.append(json.dumps(entry))
    if not items:
        raise UsageError("--benchmarks: name at least one benchmark (cgrpo list benchmark)")
    # the recipe's eval.task and eval.size were for its own evaluation problems (a run's
    # hold-out of 64 would otherwise cut every benchmark to 64); --limit cuts these
    return [f"eval.benchmarks=[{', '.join(items)}]", "eval.task=null", "eval.size=null"]


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
    """``cgrpo eval``: the command line's settings as recipe overrides, the evaluation
    (cgrpo.app.evaluate), then the three files and the table."""
    from cgrpo.app.evaluate import evaluate_target
    from cgrpo.plugins import get_registries

    check_arguments(k=k, temperature=temperature, limit=limit, verify_workers=verify_workers)
    # the backend first, so that the user's settings (policy.options...) apply on top of it
    settings = [f"policy={backend}"] if backend else []
    settings += overrides
    if benchmarks:
        settings += benchmark_overrides(benchmarks, get_registries()["benchmark"].names())
    settings += [f"eval.k={k}"] if k is not None else []
    settings += [f"eval.temperature={temperature}"] if temperature is not None else []
    settings += [f"run.verify_workers={verify_workers}"] if verify_workers is not None else []
    report, generations = evaluate_target(
        target, settings, model, limit, say=lambda line: print(f"cgrpo eval: {line}", flush=True)
    )
    target_dir = Path(out) if out else Path("eval") / Path(report["model"]).name
    write_results(target_dir, report, generations)
    header, rows = results_table(report)
    print_table(f"eval of {report['model']}", header, rows)
    metrics = report["metrics"]
    print(
        f"{report['problems']} problems in {metrics['time/eval']:.1f}s "
        f"({metrics['time/eval_verify']:.1f}s verifying)"
    )
    files = ", ".join(str(target_dir / n) for n in ("eval.json", "eval.md", "generations.jsonl"))
    print(f"cgrpo eval: {files}")
    return 0


def check_arguments(**values: float | None) -> None:
    """The numeric options, checked before anything is loaded, with the option's name (a
    recipe error would name eval.k and the recipe, which the user never wrote)."""
    lowest = {"k": 1, "limit": 1, "verify_workers": 0}
    for name, value in values.items():
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if name == "temperature" and not value > 0:
            raise UsageError(f"{flag} {value:g}: the samples' temperature must be above 0")
        if name in lowest and value < lowest[name]:
            raise UsageError(f"{flag} {value:g}: must be {lowest[name]} or more")


def write_results(target_dir: Path, report: dict[str, Any], generations: list[Any]) -> None:
    """eval.json (every number), generations.jsonl (every response), eval.md (the table)."""
    target_dir.mkdir(parents=True, exist_ok=True)
    (target_dir / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    with (target_dir / "generations.jsonl").open("w", encoding="utf-8") as fh:
        for line in generations:
            fh.write(json.dumps(line) + "\n")
    header, rows = results_table(report)
    (target_dir / "eval.md").write_text(
        f"# cgrpo eval: {report['model']}\n\n" + markdown_table(header, rows) + "\n"
    )


def results_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per set (and the macro averages), the paper's headline ``score`` first and
    what it is for the set (greedy accuracy, or avg@k where the benchmark is reported over
    samples); percentages with one decimal, as papers print them (eval.json keeps
    fractions)."""
    metrics = report["metrics"]
    header = [
        "benchmark",
        "n",
        "score",
        "score is",
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

        score_is = s.get("score", "accuracy").replace("accuracy", "greedy")
        rows.append([
            s["name"], str(s["problems"]), value("score"), score_is, value("accuracy"), str(k),
            value(f"avg@{k}"), value(f"pass@{k}"), value(f"maj@{k}"),
            f"{metrics.get(prefix + 'length_mean', 0):.1f}", value("truncated_share"),
        ])  # fmt: skip
    for label, title in (("avg_math", "avg (math)"), ("avg", "avg (all)")):
        if f"eval/{label}/score" in metrics:
            score, greedy = (_pct(metrics[f"eval/{label}/{m}"]) for m in ("score", "accuracy"))
            rows.append([title, "", score, "mean", greedy, *[""] * 6])
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
        table.add_column(name, justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    # piped or redirected: the table at its own width, not cut to 80 columns (rich's default)
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def run_compare(a: str, b: str, out: str | None) -> int:
    """Two ``cgrpo eval`` results side by side: per benchmark, score and greedy pass@1 of
    each and B - A. A and B are named by their directories (two evaluations of one model
    have the same model path)."""
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
    names = [
        f"{side} = {d} ({r['model']})" for side, d, r in zip("AB", (a, b), reports, strict=True)
    ]
    title = ", ".join(names)
    warn = _not_comparable(reports)
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


def _not_comparable(reports: list[dict[str, Any]]) -> list[str]:
    """What differs between two evaluations beyond the model: prompts, token budget,
    backend, and per benchmark the k or the score's definition."""
    warn = []
    for field in ("prompt_version", "max_new_tokens", "policy_backend"):
        if reports[0].get(field) != reports[1].get(field):
            warn.append(f"{field} differs ({reports[0].get(field)} vs {reports[1].get(field)})")
    sets = [{s["name"]: s for s in r["sets"]} for r in reports]
    for name in sets[0].keys() & sets[1].keys():
        ka, kb = (x[name]["sampling"]["k"] for x in sets)
        sa, sb = (x[name].get("score", "accuracy") for x in sets)
        if ka != kb or sa != sb:
            warn.append(f"{name}: k {ka} vs {kb}, score is {sa} vs {sb}")
    return warn
