"""The paper's comparison tables on the CPU toy task: runs a table's recipes x seeds and
prints each row's accuracy, median and spread over the seeds, from the runs' evaluations.

    python benchmarks/paper_table.py ladder|baselines [--seeds 0 1 2] [--jobs 2]
        [--out runs/paper-tables] [--set key=value ...] [--json FILE] [--csv FILE]

A table is a list of rows (a label and a CPU recipe) and the metrics read from each run's
``metrics.jsonl``: the last evaluation, and the one at step 0 (the warm model, before RL).
``ladder`` is the paper's Table 6, the ablation ladder (recipes/paper/ablation-*-cpu.yaml);
``baselines`` its main table (recipes/paper/baseline-*-cpu.yaml), in the paper's layout:
rows = methods, columns = benchmarks (hard-train, hard-test, easy) and their average, each
the median over seeds; ``--csv`` writes it with one line per method and seed too. A row
with ``after`` starts from another row's final checkpoint of the same seed (the sequential
baseline: GRPO, then refinement FT on its persistent failures).

The rows of one seed share one warm-up: a table's rows must have the same ``model``,
``data.prompt`` and ``sft`` sections (checked), the script runs ``cgrpo sft`` once per seed
and starts each row from that checkpoint (``sft.steps=0``), as if each recipe had been run
on its own with that seed. Every run is a ``cgrpo run`` subprocess with one torch thread;
``--jobs`` run at once. A finished run (status ``completed``) is reused and an interrupted
one continues from its last checkpoint (``resume=auto``), so a table that was stopped
picks up where it was. ``--set`` applies overrides to every run (for a quick
try: ``--set train.steps=4 sft.steps=8``). Not part of CI: the ladder's 18 runs take about
40 CPU-minutes (recipes/paper/README.md gives the measured times).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Row:
    label: str
    recipe: str  # relative to the repository root
    paper: str = ""  # the paper's number for this row, for reference
    after: str = ""  # start from this row's (recipe's) final checkpoint, same seed


@dataclass(frozen=True)
class Table:
    title: str
    rows: tuple[Row, ...]
    metrics: tuple[tuple[str, str], ...]  # (column title, metrics.jsonl key)
    layout: str = "per_metric"  # per_metric: one table per metric; columns: one table


LADDER = "recipes/paper/ablation-{}-cpu.yaml"
TABLES = {
    "ladder": Table(
        "The ablation ladder (paper Table 6; paper: average pass@1 of Qwen2.5-7B-Base on 8 "
        "benchmarks) on the persistent-failure toy task",
        (
            Row("1. R1-GRPO (with KL)", LADDER.format("1-r1-grpo-kl")),
            Row("2. - KL", LADDER.format("2-no-kl"), "+1.5 over row 1"),
            Row("3. + one random refinement", LADDER.format("3-random-refinement"), "43.26"),
            Row("4. + selection by quality", LADDER.format("4-quality-selection"), "43.95"),
            Row("5. + shaping f(p) = p/(p+0.1)", LADDER.format("5-shaping"), "47.08"),
        ),
        (("hard (held-out carry sums)", "eval/accuracy"),),
    ),
}
BASE = "recipes/paper/baseline-{}-cpu.yaml"
TABLES["baselines"] = Table(
    "The paper's main table (its baselines, Qwen2.5-7B-Base in the paper) on the "
    "persistent-failure toy task: greedy accuracy, median over seeds",
    (
        Row("R1-GRPO", BASE.format("r1-grpo")),
        Row("Dr.GRPO", BASE.format("dr-grpo")),
        Row("LUFFY (demonstrations in the group)", BASE.format("luffy")),
        Row("RAFT", BASE.format("raft")),
        Row("Refinement FT", BASE.format("refinement-ft")),
        Row("Critique FT", BASE.format("critique-ft")),
        Row("CITL-FT", BASE.format("citl-ft")),
        Row("Sequential (R1-GRPO, then refinement FT)", BASE.format("sequential"),
            after=BASE.format("r1-grpo")),
        Row("Critique-GRPO (indicative)", BASE.format("critique-grpo-indicative")),
        Row("Critique-GRPO (ground truth)", BASE.format("critique-grpo-ground-truth")),
        Row("Critique-GRPO (CoT: self-critique on CPU)", BASE.format("critique-grpo-cot")),
    ),
    (
        ("hard-train", "eval/hard-train/score"),
        ("hard-test", "eval/hard-test/score"),
        ("easy", "eval/easy/score"),
        ("average", "eval/avg/score"),
    ),
    layout="columns",
)  # fmt: skip
ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
RUNNING: set[subprocess.Popen] = set()  # stopped when the script is interrupted
LOCK = threading.Lock()
STOPPING = threading.Event()


def resolved(recipe: str, overrides: list[str]) -> dict:
    from cgrpo.config import load_recipe

    return load_recipe(REPO / recipe, overrides)[1]


def shared_warmup(table: Table, extra: list[str]) -> None:
    """Exit with a message when the rows would not start from the same warm-up."""
    first = None
    for row in table.rows:
        r = resolved(row.recipe, extra)
        key = (r["model"], r["data"]["prompt"], r["sft"])
        if first is None:
            first = (row, key)
        elif key != first[1]:
            sys.exit(
                f"paper_table: {row.recipe} has other model/data.prompt/sft settings than "
                f"{first[0].recipe}: its rows cannot share a warm-up"
            )


def start_from(warm: Path, recipe: str, extra: list[str]) -> list[str]:
    """Overrides that start ``recipe`` from the warm checkpoint ``warm`` without a warm-up:
    ``sft.steps=0``, and null for the warm-up settings that are only meaningful with one."""
    from cgrpo.config.schema import SFTConfig

    sft = resolved(recipe, extra)["sft"]
    nulls = [
        f"sft.{k}=null"
        for k, field in SFTConfig.model_fields.items()
        if field.default is None and sft.get(k) is not None and k != "steps"
    ]
    return [f"model.path={warm}", "sft.steps=0", *nulls]


def completed(run_dir: Path) -> bool:
    status = run_dir / "status.json"
    return status.is_file() and json.loads(status.read_text()).get("status") == "completed"


def cgrpo(command: str, recipe: str, run_dir: Path, seed: int, overrides: list[str]) -> dict:
    """Run one ``cgrpo`` command unless its run already completed; wall and CPU seconds."""
    if completed(run_dir):
        return {"run": str(run_dir), "reused": True}
    args = [sys.executable, "-m", "cgrpo", command, str(REPO / recipe)]
    args += [f"run.name={run_dir.name}", f"run.output_dir={run_dir.parent}", f"run.seed={seed}"]
    args += ["run.console=plain", "resume=auto", *overrides]  # an interrupted run goes on
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(run_dir.parent / f"{run_dir.name}.log", "a") as log:  # a resumed run appends
        env = {**os.environ, **ENV}
        with LOCK:
            if STOPPING.is_set():
                raise RuntimeError("stopped")
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
            RUNNING.add(proc)
        _, status, usage = os.wait4(proc.pid, 0)
        with LOCK:
            RUNNING.discard(proc)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(args)} failed; see {run_dir.parent / run_dir.name}.log")
    cpu = usage.ru_utime + usage.ru_stime
    return {"run": str(run_dir), "wall_s": time.perf_counter() - started, "cpu_s": cpu}


def evaluations(run_dir: Path, key: str) -> tuple[float, float]:
    """(value at step 0, value at the last evaluation) of ``key`` in the run's metrics."""
    found = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if key in entry:
            found.append((entry["step"], entry[key]))
    if not found:
        raise RuntimeError(f"{run_dir}/metrics.jsonl has no {key}")
    first = found[0][1] if found[0][0] == 0 else float("nan")
    return first, found[-1][1]


def run_table(name: str, seeds: list[int], jobs: int, out: Path, extra: list[str]) -> list:
    """Warm-ups, then every row x seed, ``jobs`` at a time; returns the runs' records."""
    table = TABLES[name]
    shared_warmup(table, extra)
    records: list[dict] = []
    with ThreadPoolExecutor(jobs) as pool:
        try:
            _submit_and_collect(pool, name, table, seeds, out, extra, records)
        except BaseException:  # interrupted: stop the runs under way; a rerun reuses the rest
            STOPPING.set()
            pool.shutdown(wait=False, cancel_futures=True)
            with LOCK:
                for proc in RUNNING:
                    proc.terminate()
            raise
    return records


def _submit_and_collect(pool, name, table, seeds, out, extra, records) -> None:
    """One warm-up per seed; when a seed's warm-up is done, its rows; records each run."""
    first = table.rows[0].recipe
    warm: dict[Future, int] = {}
    for seed in seeds:  # each seed creates its own tiny model: no race on one directory
        own = [f"model.path={out / f'tiny-model-s{seed}'}", *extra]
        warm[pool.submit(cgrpo, "sft", first, out / f"{name}-warm-s{seed}", seed, own)] = seed
    runs: dict[Future, tuple[Row, int]] = {}
    for done in as_completed(warm):
        seed = warm[done]
        records.append({"row": "warm-up", "seed": seed, **done.result()})
        checkpoint = out / f"{name}-warm-s{seed}" / "checkpoints" / "step-0"
        for row in table.rows:
            if not row.after:
                runs[_submit_row(pool, name, row, seed, checkpoint, out, extra)] = (row, seed)
    pending = list(runs)
    while pending:  # a row with `after` starts when that row of its seed is done
        done = next(as_completed(pending))
        pending.remove(done)
        row, seed = runs[done]
        records.append({"row": row.label, "seed": seed, **done.result()})
        print(f"done: {row.label}, seed {seed}", file=sys.stderr)
        for later in (r for r in table.rows if r.after == row.recipe):
            final = last_checkpoint(run_dir_of(out, name, row, seed))
            future = _submit_row(pool, name, later, seed, final, out, extra)
            runs[future] = (later, seed)
            pending.append(future)


def run_dir_of(out: Path, name: str, row: Row, seed: int) -> Path:
    return out / f"{name}-{Path(row.recipe).stem}-s{seed}"


def last_checkpoint(run_dir: Path) -> Path:
    steps = sorted((run_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))
    if not steps:
        raise RuntimeError(f"{run_dir} has no checkpoint to start the next row from")
    return steps[-1]


def _submit_row(pool, name, row, seed, checkpoint, out, extra) -> Future:
    over = [*extra, *start_from(checkpoint, row.recipe, extra)]
    return pool.submit(cgrpo, "run", row.recipe, run_dir_of(out, name, row, seed), seed, over)


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def render_columns(name: str, seeds: list[int], out: Path) -> tuple[str, dict, str]:
    """The paper's layout: one line per method, one column per benchmark and the average
    (medians over seeds, the spread in the CSV); the numbers as data and as CSV."""
    table = TABLES[name]
    titles = [t for t, _ in table.metrics]
    lines = [f"### {table.title}", "", f"| method | {' | '.join(titles)} |",
             "|---|" + "---|" * len(titles)]  # fmt: skip
    csv_lines = ["method,seed," + ",".join(titles)]
    data: dict = {"table": name, "seeds": seeds, "rows": []}
    for row in table.rows:
        per_metric = []
        for _, key in table.metrics:
            per_metric.append([evaluations(run_dir_of(out, name, row, s), key)[1] for s in seeds])
        cells = " | ".join(f"{statistics.median(v):.3f}" for v in per_metric)
        lines.append(f"| {row.label} | {cells} |")
        for i, s in enumerate(seeds):
            csv_lines.append(f'"{row.label}",{s},' + ",".join(f"{v[i]:.4f}" for v in per_metric))
        csv_lines.append(
            f'"{row.label}",median,' + ",".join(f"{statistics.median(v):.4f}" for v in per_metric)
        )
        data["rows"].append({"row": row.label, **dict(zip(titles, per_metric, strict=True))})
    return "\n".join(lines) + "\n", data, "\n".join(csv_lines) + "\n"


def render(name: str, seeds: list[int], out: Path) -> tuple[str, dict]:
    """The markdown table of a finished table's runs, and the same numbers as data."""
    table = TABLES[name]
    seed_cols = "".join(f" seed {s} |" for s in seeds)
    lines = [f"### {table.title}", ""]
    data: dict = {"table": name, "seeds": seeds, "rows": []}
    for title, key in table.metrics:
        lines += [
            f"{title}, `{key}` at the last evaluation: median (min-max) over seeds",
            "",
            f"| row | median (spread) |{seed_cols} paper |",
            "|---|---|" + "---|" * len(seeds) + "---|",
        ]
        before = []
        for row in table.rows:
            pairs = [evaluations(out / f"{name}-{Path(row.recipe).stem}-s{s}", key) for s in seeds]
            before += [b for b, _ in pairs]
            after = [a for _, a in pairs]
            cells = "".join(f" {v:.2f} |" for v in after)
            lines.append(f"| {row.label} | {spread(after)} |{cells} {row.paper} |")
            data["rows"].append({"row": row.label, "metric": key, "values": after})
        warm = [b for b in before if b == b]  # every row of a seed starts from its warm-up
        blank = " |" * len(seeds)
        lines.append(f"| warm model (step 0), all rows | {spread(warm)} |{blank} |")
        lines.append("")
    return "\n".join(lines), data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=sorted(TABLES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (1 thread each)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "paper-tables")
    parser.add_argument("--set", nargs="*", default=[], help="overrides for every run")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--csv", type=Path, help="also write the table as CSV (columns layout)")
    args = parser.parse_args(argv)
    if args.csv and TABLES[args.table].layout != "columns":
        parser.error(f"--csv writes the columns layout; table {args.table} has one per metric")
    started = time.perf_counter()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    records = run_table(args.table, args.seeds, args.jobs, args.out.resolve(), args.set)
    wall = time.perf_counter() - started
    if TABLES[args.table].layout == "columns":
        text, data, csv = render_columns(args.table, args.seeds, args.out.resolve())
        if args.csv:
            args.csv.write_text(csv)
    else:
        text, data = render(args.table, args.seeds, args.out.resolve())
    cpu = sum(r.get("cpu_s", 0.0) for r in records)
    fresh = sum(1 for r in records if not r.get("reused"))
    text += f"\n{fresh} runs: {wall / 60:.1f} min wall, {cpu / 60:.1f} CPU-min, {args.jobs} at once"
    print(text)
    if args.json:
        data.update(wall_s=wall, cpu_s=cpu, runs=records)
        args.json.write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
