"""``cgrpo report``: the curves of one or several runs, as PNGs, report.html and report.md.

Reading and summarising (:func:`read_run`, :func:`summary`, :func:`panels_with_data`) is
plain Python; only :func:`write_report` draws (matplotlib, Agg backend: no display). A
run that is still going is read up to its last complete line; a panel whose metrics no
run has is left out rather than drawn empty. Several runs overlay on each panel, named by
their directories (the natural use: GRPO against Critique-GRPO, shaped against unshaped).
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from cgrpo.errors import CgrpoError


@dataclass(frozen=True)
class Panel:
    """One figure: its title, the metrics drawn on it and how."""

    name: str  # file name stem
    title: str
    metrics: tuple[str, ...]  # exact keys; a key ending in "/" takes every key under it
    cumulative: tuple[str, ...] = ()  # drawn as running sums (e.g. money spent)
    stacked: bool = False  # one stacked area per run (seconds per stage)
    exclude: tuple[str, ...] = ()  # key endings a prefix entry leaves out
    # with nested keys (eval/<benchmark>/...), a prefix entry keeps only those ending so:
    # nine benchmarks x eight metrics would bury the one number each is reported by
    headline: str = ""


PANELS = (
    Panel("reward", "Reward", ("reward/initial_mean", "reward/refinement_kept_mean")),
    Panel(
        "refinement",
        "Refinement success and rescued all-failed groups",
        ("refine/success_rate", "groups/rescued_share", "groups/all_failed_share"),
    ),
    Panel(
        "zero_advantage", "Share of groups with zero advantage", ("advantage/zero_groups_share",)
    ),
    Panel(
        "eval",
        "Evaluation",
        ("eval/",),
        exclude=("problems", "length_mean"),
        headline="/score",
    ),
    Panel(
        "entropy",
        "Entropy of initial and refinement tokens",
        ("entropy/initial", "entropy/refinement"),
    ),
    Panel(
        "shaping",
        "Refinement-token probability and shaped weight",
        ("refine/token_prob_mean", "refine/shaped_weight_mean"),
    ),
    Panel(
        "update",
        "Clip fraction, KL, gradient norm",
        ("clip/fraction", "kl/mean", "update/grad_norm"),
    ),
    Panel(
        "mismatch",
        "Sampler vs trainer log-prob difference",
        ("sampler/logprob_diff_max", "sampler/logprob_diff_mean", "policy/sync_logprob_diff_max"),
    ),
    Panel(
        "critic",
        "Critic: cumulative cost (USD), latency (s), failures",
        ("critique/cost", "critique/latency_s_mean", "critique/failed"),
        cumulative=("critique/cost",),
    ),
    Panel("time", "Seconds per stage", ("time/",), stacked=True),
)
# time/step is the sum of the stages and time/rollout of the rollout's; time/eval is drawn
# with evaluation's own cadence
_NOT_A_STAGE = {"time/step", "time/rollout", "time/eval", "time/eval_verify"}
SUMMARY_KEYS = (
    "reward/initial_mean",
    "refine/success_rate",
    "groups/rescued_share",
    "eval/accuracy",
    "eval/avg/score",
    "loss/total",
    "time/step",
)


@dataclass
class Run:
    name: str
    path: Path
    rows: list[dict[str, float]] = field(default_factory=list)

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of ``key`` where it is logged and finite."""
        xs, ys = [], []
        for row in self.rows:
            value = row.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                xs.append(float(row["step"]))
                ys.append(float(value))
        return xs, ys

    def keys(self) -> set[str]:
        return {k for row in self.rows for k in row}


def read_run(path: str | Path) -> Run:
    """The metrics of a run directory (or of a metrics.jsonl file). A last line that is
    still being written is ignored; a malformed line elsewhere is an error naming it."""
    path = Path(path)
    file = path / "metrics.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise CgrpoError(f"{path}: no metrics.jsonl (is it a cgrpo run directory?)")
    lines = file.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):  # a run still writing its last line
                break
            raise CgrpoError(f"{file}:{number}: not a JSON line ({exc.msg})") from None
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    name = file.parent.name if file.name == "metrics.jsonl" else file.stem
    return Run(name, file.parent, rows)


def expand(panel: Panel, keys: set[str]) -> list[str]:
    """The metrics of ``panel`` that ``keys`` holds (prefix entries expanded, sorted)."""
    out: list[str] = []
    for m in panel.metrics:
        if m.endswith("/"):
            found = sorted(k for k in keys if k.startswith(m) and not k.endswith(panel.exclude))
            nested = [
                k for k in found if k.count("/") > m.count("/") and k.endswith(panel.headline)
            ]
            if panel.headline and nested:
                found = nested
            if panel.stacked:
                found = [k for k in found if k not in _NOT_A_STAGE]
            out += [k for k in found if k not in out]
        elif m in keys and m not in out:
            out.append(m)
    return out


def panels_with_data(
    runs: list[Run], only: list[str] | None = None
) -> list[tuple[Panel, list[str]]]:
    """Each panel with the metrics some run logged (``only``: a custom single panel per
    listed metric instead of the defaults); panels with none are left out."""
    keys = set().union(*(r.keys() for r in runs)) if runs else set()
    chosen = [Panel(m.replace("/", "_"), m, (m,)) for m in only] if only else list(PANELS)
    out = []
    for panel in chosen:
        metrics = [m for m in expand(panel, keys) if any(r.series(m)[0] for r in runs)]
        if metrics:
            out.append((panel, metrics))
    return out


def summary(runs: list[Run], keys: tuple[str, ...] = SUMMARY_KEYS) -> list[dict[str, object]]:
    """Per run: steps logged and, for each key, the final and the best (max) value."""
    table = []
    for run in runs:
        row: dict[str, object] = {"run": run.name, "steps": len(run.rows)}
        for key in keys:
            _, ys = run.series(key)
            row[f"{key} final"] = ys[-1] if ys else None
            row[f"{key} best"] = max(ys) if ys else None
        table.append(row)
    return table


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` points (1 = unchanged)."""
    if window <= 1:
        return list(values)
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_report(
    runs: list[Run], out: Path, only: list[str] | None = None, smoothing: int = 1
) -> list[Path]:
    """Draw every panel with data to ``out``/NAME.png, then report.md and a self-contained
    report.html (figures embedded). Returns the PNG paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise CgrpoError("cgrpo report needs matplotlib: pip install 'cgrpo[report]'") from exc
    out.mkdir(parents=True, exist_ok=True)
    pngs = []
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ("-", "--", ":", "-.")
    for panel, metrics in panels_with_data(runs, only):
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        if panel.stacked:
            for i, run in enumerate(runs):
                stages = [(m, *run.series(m)) for m in metrics]
                stages = [(m, xs, smooth(ys, smoothing)) for m, xs, ys in stages if xs]
                if not stages:
                    continue
                steps = stages[0][1]
                stages = [(m, ys) for m, xs, ys in stages if xs == steps]  # same steps only
                if len(runs) == 1:  # one run: its stages as stacked areas
                    names = [m.split("/", 1)[1] for m, _ in stages]
                    ax.stackplot(steps, *[ys for _, ys in stages], labels=names, alpha=0.8)
                else:  # several runs: each one's total, comparable on one axis
                    total = [sum(v) for v in zip(*[ys for _, ys in stages], strict=True)]
                    color = colors[i % len(colors)]
                    ax.plot(steps, total, color=color, label=f"{run.name}: all stages")
        else:
            for i, run in enumerate(runs):
                for j, metric in enumerate(metrics):
                    xs, ys = run.series(metric)
                    if not xs:
                        continue
                    if metric in panel.cumulative:
                        ys = [sum(ys[: k + 1]) for k in range(len(ys))]
                    ax.plot(xs, smooth(ys, smoothing), styles[j % len(styles)],
                            color=colors[i % len(colors)], label=f"{run.name}: {metric}",
                            marker="o" if len(xs) < 3 else None)  # fmt: skip
        ax.set_title(panel.title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = out / f"{panel.name}.png"
        fig.savefig(path)
        plt.close(fig)
        pngs.append(path)
    table = summary(runs)
    _write_markdown(runs, table, pngs, out / "report.md")
    _write_html(runs, table, pngs, out / "report.html")
    return pngs


def _table_rows(table: list[dict[str, object]]) -> tuple[list[str], list[list[str]]]:
    head = list(table[0]) if table else ["run"]
    return head, [[_fmt(row[h]) for h in head] for row in table]


def _write_markdown(runs: list[Run], table, pngs: list[Path], path: Path) -> None:
    head, rows = _table_rows(table)
    lines = [f"# cgrpo report: {', '.join(r.name for r in runs)}", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("")
    lines += [f"![{p.stem}]({p.name})" for p in pngs]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_html(runs: list[Run], table, pngs: list[Path], path: Path) -> None:
    head, rows = _table_rows(table)
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    images = "".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"></figure>'
        for p in pngs
    )
    title = html.escape(", ".join(r.name for r in runs))
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>cgrpo report: {title}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "figure{display:inline-block;margin:0.5em}</style></head><body>"
        f"<h1>cgrpo report: {title}</h1><table><tr>{cells}</tr>{body}</table>{images}"
        "</body></html>\n",
        encoding="utf-8",
    )
