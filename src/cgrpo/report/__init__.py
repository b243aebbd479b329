"""``cgrpo report``: the curves of one or several runs, as PNGs, report.html and report.md.

Reading (:mod:`.reading`), choosing what to draw (:mod:`.panels`) and summarising
(:mod:`.summary`) are plain Python; :mod:`.figures` draws (matplotlib) and :mod:`.pages`
writes the Markdown and HTML. A run that is still going is read up to its last complete
line; a panel whose metrics no run has is left out, with a line saying why. Several runs
overlay on each panel, named by their directories (the natural use: GRPO against
Critique-GRPO, shaped against unshaped).
"""

from __future__ import annotations

from pathlib import Path

from cgrpo.report.figures import draw, ema, save
from cgrpo.report.pages import write_html, write_markdown
from cgrpo.report.panels import PANELS, Panel, axes, expand, panels_with_data, plan
from cgrpo.report.reading import Run, distinct_names, read_run
from cgrpo.report.summary import SUMMARY_KEYS, summary

DEFAULT_SMOOTHING = 0.8

__all__ = [
    "DEFAULT_SMOOTHING", "PANELS", "SUMMARY_KEYS", "Panel", "Run", "axes", "draw", "ema",
    "expand", "panels_with_data", "plan", "read_run", "summary", "write_report",
]  # fmt: skip


def write_report(
    runs: list[Run],
    out: Path,
    only: list[str] | None = None,
    smoothing: float = DEFAULT_SMOOTHING,
) -> tuple[list[Path], list[str]]:
    """Draw every panel with data to ``out``/NAME.png, then report.md and a self-contained
    report.html (figures embedded). Returns the PNG paths and the lines saying what was
    left out and why."""
    distinct_names(runs)
    out.mkdir(parents=True, exist_ok=True)
    drawn, left_out = plan(runs, only)
    pngs = [save(draw(p, metrics, runs, smoothing), out / f"{p.name}.png") for p, metrics in drawn]
    pngs += pipeline_figures(runs, out)
    table = summary(runs)
    write_markdown(runs, table, left_out, pngs, out / "report.md")
    write_html(runs, table, left_out, pngs, out / "report.html")
    return pngs, left_out


def pipeline_figures(runs: list[Run], out: Path) -> list[Path]:
    """The pipeline's timeline (who waits for whom, last 6 steps) of each run that
    pipelined its rollouts (``rollout.max_staleness >= 1``)."""
    from cgrpo.train.timeline import draw_pipeline, read_pipeline

    pngs = []
    for run in runs:
        events = read_pipeline(run.path)
        if events:
            name = "pipeline-timeline" if len(runs) == 1 else f"pipeline-timeline-{run.name}"
            pngs.append(draw_pipeline(events, f"{run.name}: the last 6 steps", out / f"{name}.png"))
    return pngs
