"""Drawing the report's figures with matplotlib (Agg backend: no display needed).

Each panel is one figure of small multiples, labelled with units, with integer step
ticks: for one run, one axis per quantity (its metrics told apart by colour); for several,
one axis per metric (colour tells the runs apart); evaluation has one axis per benchmark
and the seconds per stage one per run.
Per-step curves are smoothed exponentially (the raw values faint behind them), as
TensorBoard does; evaluations, measured every N steps, are drawn as they are.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

from cgrpo.errors import CgrpoError
from cgrpo.report.panels import Axis, Panel, axes
from cgrpo.report.reading import Run

STYLES = ("-", "--", ":", "-.")
STAGES = ("sample", "verify", "critique", "refine", "update")  # a step's order
WIDTH_IN, ROW_IN, DPI = 11.0, 3.4, 100  # report.html shows figures at their pixel size
FONT = {"font.size": 11, "axes.titlesize": 11, "legend.fontsize": 9, "figure.titlesize": 13}


def pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise CgrpoError("cgrpo report needs matplotlib: pip install 'cgrpo[report]'") from exc
    return plt


def ema(values: list[float], factor: float) -> list[float]:
    """Exponential moving average with TensorBoard's debiasing: s_t = factor * s_(t-1) +
    (1 - factor) * x_t from s_0 = 0, divided by 1 - factor^t (so the first point is
    x_1, not pulled towards 0). ``factor`` 0 leaves the values as they are."""
    if factor <= 0:
        return list(values)
    out, state = [], 0.0
    for t, value in enumerate(values, 1):
        state = factor * state + (1 - factor) * value
        out.append(state / (1 - factor**t))
    return out


def draw(panel: Panel, metrics: list[str], runs: list[Run], smoothing: float) -> Any:
    """The figure of ``panel`` (a matplotlib Figure; the caller saves and closes it)."""
    plt = pyplot()
    present = [r for r in runs if _has_data(r, metrics)]
    if panel.stacked:  # one axis per run, titled by it when there are several
        grid = [Axis(r.name if len(runs) > 1 else "", "seconds", tuple(metrics)) for r in present]
    else:
        grid = axes(panel, metrics, len(present))
    cols = min(3, len(grid))
    rows = math.ceil(len(grid) / cols)
    with plt.rc_context(FONT):
        fig, flat = plt.subplots(rows, cols, figsize=(WIDTH_IN, ROW_IN * rows + 0.8), dpi=DPI,
                                 squeeze=False, sharey=panel.stacked)  # fmt: skip
        cells = list(flat.flat)
        factor = smoothing if panel.smooth else 0.0
        for index, (ax, axis) in enumerate(zip(cells, grid, strict=False)):
            if panel.stacked:
                _stack(ax, present[index], metrics, factor)
            else:
                _lines(ax, axis, runs, panel, factor)
        shown = cells[: len(grid)]
        for ax, axis in zip(shown, grid, strict=True):
            _dress(ax, axis, panel, shown if panel.stacked else [ax])
        for ax in cells[len(grid) :]:
            ax.set_visible(False)
        top = _titles(fig, panel, present, factor)
        fig.tight_layout(rect=(0, 0.2 / fig.get_figheight() if factor else 0, 1, 1 - top))
    return fig


def _has_data(run: Run, metrics: list[str]) -> bool:
    return any(run.series(m)[0] for m in metrics)


def _lines(ax: Any, axis: Axis, runs: list[Run], panel: Panel, factor: float) -> None:
    """Each run's curve of each metric on ``ax`` (raw values faint behind the smoothed)."""
    from matplotlib.lines import Line2D

    colors = _colors()
    several = len(runs) > 1
    for i, run in enumerate(runs):
        for j, metric in enumerate(axis.metrics):
            xs, ys = run.series(metric)
            if not xs:
                continue
            smoothing = factor
            if metric in panel.cumulative:  # a running sum has no noise to smooth
                ys, smoothing = list(itertools.accumulate(ys)), 0.0
            color = colors[(i if several else j) % len(colors)]
            style = STYLES[j % len(STYLES)] if several else "-"
            marker = "o" if len(xs) < 3 or not panel.smooth else None
            if smoothing:
                ax.plot(xs, ys, style, color=color, alpha=0.22, linewidth=0.8)
            ax.plot(xs, ema(ys, smoothing), style, color=color, marker=marker, markersize=4,
                    linewidth=1.8, label=run.name if several else metric)  # fmt: skip
    if several and len(axis.metrics) > 1:  # which line style is which metric (held-out eval)
        handles = [Line2D([], [], color="0.3", linestyle=STYLES[j % len(STYLES)], label=m)
                   for j, m in enumerate(axis.metrics)]  # fmt: skip
        ax.legend(handles=handles, loc="best", framealpha=0.8)
    elif not several and len(axis.metrics) > 1:
        ax.legend(loc="best", framealpha=0.8)


def _stage_order(metric: str) -> tuple[int, str]:
    known = [f"time/{s}" for s in STAGES]
    return (known.index(metric) if metric in known else len(known), metric)


def _stack(ax: Any, run: Run, metrics: list[str], factor: float) -> None:
    """One run's seconds per stage as stacked areas (stages logged at every step), in the
    order a step runs them, each stage in the same colour in every run."""
    colors = _colors()
    metrics = sorted(metrics, key=_stage_order)
    series = {m: run.series(m) for m in metrics}
    steps = max((xs for xs, _ in series.values()), key=len, default=[])
    shown = [(m, ys) for m, (xs, ys) in series.items() if xs == steps and xs]
    if shown:
        ax.stackplot(steps, *[ema(ys, factor) for _, ys in shown],
                     labels=[m.split("/", 1)[1] for m, _ in shown],
                     colors=[colors[metrics.index(m) % len(colors)] for m, _ in shown],
                     alpha=0.85)  # fmt: skip


def _dress(ax: Any, axis: Axis, panel: Panel, sharing: list[Any]) -> None:
    """Title, labelled axes, integer step ticks. A non-negative quantity starts at 0 (a
    curve at 0 throughout sits at the bottom, not mid-axis), up to the highest value on
    the axes that share ``ax``'s y scale; log-prob differences span decades: log scale."""
    from matplotlib.ticker import MaxNLocator

    ys = [y for a in sharing for y in _ys(a)]
    if panel.log_y and ys and min(ys) > 0:
        ax.set_yscale("log")
    elif ys and min(ys) >= 0:
        ax.set_ylim(0, 1.05 * max(ys) if max(ys) > 0 else 1)
    ax.set_title(axis.title)
    ax.set_xlabel("step")
    ax.set_ylabel(axis.ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    ax.grid(alpha=0.3)


def _ys(ax: Any) -> list[float]:
    """Every y value drawn on ``ax``: lines and stacked areas."""
    ys = [float(y) for line in ax.get_lines() for y in line.get_ydata()]
    return ys + [float(y) for c in ax.collections for p in c.get_paths() for y in p.vertices[:, 1]]


def _titles(fig: Any, panel: Panel, runs: list[Run], factor: float) -> float:
    """The panel's title (with the run's name when there is one run), a legend of runs
    (several runs) or of stages (stacked) under it, and a note on the smoothing. Returns
    the share of the figure's height they take at the top."""
    from matplotlib.lines import Line2D

    title = panel.title if len(runs) != 1 else f"{panel.title}: {runs[0].name}"
    height = fig.get_figheight()
    fig.suptitle(title, y=1 - 0.08 / height, va="top")
    top = 0.3 / height
    handles: list[Any] = []
    if panel.stacked:  # every stage some run has, in a step's order
        found = {label: h for ax in fig.axes for h, label in zip(*ax.get_legend_handles_labels(),
                                                                 strict=True)}  # fmt: skip
        handles = [found[s] for s in sorted(found, key=lambda s: _stage_order(f"time/{s}"))]
    elif len(runs) > 1:
        colors = _colors()
        handles = [Line2D([], [], color=colors[i % len(colors)], linewidth=2.5, label=r.name)
                   for i, r in enumerate(runs)]  # fmt: skip
    if handles:
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1 - top),
                   ncols=min(6, len(handles)), frameon=False)  # fmt: skip
        top += 0.2 / height
    if factor:
        raw = "" if panel.stacked else "; raw values faint"
        fig.text(0.995, 0.005, f"smoothed: exponential moving average, factor {factor:g}{raw}",
                 ha="right", va="bottom", fontsize=8, color="0.4")  # fmt: skip
    return top


def _colors() -> list[str]:
    return pyplot().rcParams["axes.prop_cycle"].by_key()["color"]


def save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)
    return path
