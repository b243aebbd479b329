"""The paper's comparison tables on the CPU toy task: runs a table's recipes x seeds and
prints each row's accuracy, median and spread over the seeds, from the runs' evaluations.

    python benchmarks/paper_table.py ladder|baselines [--seeds 0 1 2] [--jobs 2]
        [--out runs/paper-tables] [--set key=value ...] [--json FILE] [--csv FILE]
        [--tables recipes/paper/tables.yaml]

The tables are data (recipes/paper/tables.yaml): each is a list of rows (a label and a CPU
recipe) and the metrics read from each run's ``metrics.jsonl`` (its columns): the last
evaluation, and the one at step 0 (the warm model, before RL). ``ladder`` is the paper's
Table 6, the ablation ladder (recipes/paper/ablation-*-cpu.yaml); ``baselines`` its main
table (recipes/paper/baseline-*-cpu.yaml), in the paper's layout (``layout: columns``):
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
try: ``--set train.steps=4 sft.steps=8``). Not part of CI (tests/integration/
test_paper_table_run.py runs the ladder for a few steps): the ladder's 18 runs should take
about 40 CPU-minutes (estimated from the toy recipe's 6-8 minutes per 240-step run on an
idle 2-core machine; the script prints the measured time).
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
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

REPO = Path(__file__).resolve().parents[1]
TABLES_FILE = REPO / "recipes" / "paper" / "tables.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Row(_Strict):
    label: str
    recipe: str  # a CPU recipe, relative to the tables file (absolute once loaded)
    paper: str = ""  # the paper's number for this row, for reference
    after: str = ""  # an earlier row's recipe: start from its final checkpoint, same seed


class Metric(_Strict):
    title: str
    key: str  # a key of metrics.jsonl, read at the step-0 and the last evaluation


class Table(_Strict):
    title: str
    metrics: tuple[Metric, ...] = Field(min_length=1)
    rows: tuple[Row, ...] = Field(min_length=1)
    # per_metric: one table per metric, a column per seed; columns: the paper's layout,
    # one line per method and one column per metric
    layout: Literal["per_metric", "columns"] = "per_metric"


class TableFileError(Exception):
    """A tables file that cannot be read: the message names the file and the field."""


def load_tables(path: Path = TABLES_FILE) -> dict[str, Table]:
    """The tables of ``path``, each row's recipe (and ``after``) resolved against the
    file's directory."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TableFileError(f"{path}: {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise TableFileError(f"{path}: expected a mapping of table names to tables")
    tables = {}
    for name, spec in raw.items():
        try:
            table = Table.model_validate(spec)
        except ValidationError as exc:
            where = "; ".join(
                f"{name}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise TableFileError(f"{path}: {where}") from None
        tables[str(name)] = table.model_copy(update={"rows": _resolved_rows(path, name, table)})
    return tables


def _resolved_rows(path: Path, name: str, table: Table) -> tuple[Row, ...]:
    """The rows with absolute recipe paths; an ``after`` must name an earlier row's recipe."""
    rows: list[Row] = []
    for index, row in enumerate(table.rows):
        recipe = (path.parent / row.recipe).resolve()
        if not recipe.is_file():
            raise TableFileError(f"{path}: {name}.rows.{index}.recipe: no file {recipe}")
        after = str((path.parent / row.after).resolve()) if row.after else ""
        if after and after not in [r.recipe for r in rows]:
            raise TableFileError(
                f"{path}: {name}.rows.{index}.after: {row.after} is not the recipe of an "
                "earlier row of this table"
            )
        rows.append(row.model_copy(update={"recipe": str(recipe), "after": after}))
    return tuple(rows)


ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
RUNNING: set[subprocess.Popen] = set()  # stopped when the script is interrupted
LOCK = threading.Lock()
STOPPING = threading.Event()


def resolved(recipe: str, overrides: list[str]) -> dict:
    from cgrpo.config import load_recipe

    return load_recipe(Path(recipe), overrides)[1]


def shared_warmup(table: Table, extra: list[str]) -> None:
    """Raise when the rows would not start from the same warm-up."""
    first = None
    for row in table.rows:
        r = resolved(row.recipe, extra)
        key = (r["model"], r["data"]["prompt"], r["sft"])
        if first is None:
            first = (row, key)
        elif key != first[1]:
            raise TableFileError(
                f"{row.recipe} has other model/data.prompt/sft settings than "
                f"{first[0].recipe}: the rows of one table must share a warm-up"
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
    args = [sys.executable, "-m", "cgrpo", command, recipe]
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


def run_table(
    name: str, table: Table, seeds: list[int], jobs: int, out: Path, extra: list[str]
) -> list:
    """Warm-ups, then every row x seed, ``jobs`` at a time; returns the runs' records."""
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


def render_columns(name: str, table: Table, seeds: list[int], out: Path) -> tuple[str, dict, str]:
    """The paper's layout: one line per method, one column per benchmark and the average
    (medians over seeds, the spread in the CSV); the numbers as data and as CSV."""
    titles = [m.title for m in table.metrics]
    lines = [f"### {table.title}", "", f"| method | {' | '.join(titles)} |",
             "|---|" + "---|" * len(titles)]  # fmt: skip
    csv_lines = ["method,seed," + ",".join(titles)]
    data: dict = {"table": name, "seeds": seeds, "rows": []}
    for row in table.rows:
        per_metric = []
        for metric in table.metrics:
            runs = [run_dir_of(out, name, row, s) for s in seeds]
            per_metric.append([evaluations(run, metric.key)[1] for run in runs])
        cells = " | ".join(f"{statistics.median(v):.3f}" for v in per_metric)
        lines.append(f"| {row.label} | {cells} |")
        for i, s in enumerate(seeds):
            csv_lines.append(f'"{row.label}",{s},' + ",".join(f"{v[i]:.4f}" for v in per_metric))
        csv_lines.append(
            f'"{row.label}",median,' + ",".join(f"{statistics.median(v):.4f}" for v in per_metric)
        )
        data["rows"].append({"row": row.label, **dict(zip(titles, per_metric, strict=True))})
    return "\n".join(lines) + "\n", data, "\n".join(csv_lines) + "\n"


def render(name: str, table: Table, seeds: list[int], out: Path) -> tuple[str, dict]:
    """The markdown table of a finished table's runs, and the same numbers as data."""
    seed_cols = "".join(f" seed {s} |" for s in seeds)
    lines = [f"### {table.title}", ""]
    data: dict = {"table": name, "seeds": seeds, "rows": []}
    for title, key in ((m.title, m.key) for m in table.metrics):
        lines += [
            f"{title}, `{key}` at the last evaluation: median (min-max) over seeds",
            "",
            f"| row | median (spread) |{seed_cols} paper |",
            "|---|---|" + "---|" * len(seeds) + "---|",
        ]
        before = []
        for row in table.rows:
            pairs = [evaluations(run_dir_of(out, name, row, s), key) for s in seeds]
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
    parser.add_argument("table", help="a table of the tables file (ladder, ...)")
    parser.add_argument("--tables", type=Path, default=TABLES_FILE, help="the tables file")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (1 thread each)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "paper-tables")
    parser.add_argument("--set", nargs="*", default=[], help="overrides for every run")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--csv", type=Path, help="also write the table as CSV (columns layout)")
    args = parser.parse_args(argv)
    from cgrpo.errors import RecipeError

    try:
        tables = load_tables(args.tables)
        if args.table not in tables:
            known = ", ".join(tables)
            raise TableFileError(f"{args.tables}: no table {args.table!r} (it has: {known})")
        table = tables[args.table]
        shared_warmup(table, args.set)
    except (TableFileError, RecipeError) as exc:
        print(f"paper_table: {exc}", file=sys.stderr)
        return 2
    if args.csv and table.layout != "columns":
        parser.error(f"--csv writes the columns layout; table {args.table} has one per metric")
    started = time.perf_counter()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out = args.out.resolve()
    try:
        records = run_table(args.table, table, args.seeds, args.jobs, out, args.set)
    except RuntimeError as exc:  # a run failed: its log says why
        print(f"paper_table: {exc}", file=sys.stderr)
        return 1
    wall = time.perf_counter() - started
    if table.layout == "columns":
        text, data, csv = render_columns(args.table, table, args.seeds, out)
        if args.csv:
            args.csv.write_text(csv)
    else:
        text, data = render(args.table, table, args.seeds, out)
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
