"""When each group of a step was in which stage: the rollout's timeline.

Every group coroutine records spans (group, stage, start, end) in seconds from the start of
the rollout. They give the per-stage times of metrics.jsonl (:func:`stage_seconds`), are
written to ``timeline.jsonl`` (one line per step) and drawn by :func:`draw_timeline` (who
waits for whom; docs/rollout.md shows one).

Stages, in the order of one group's story: ``sample`` (its G responses, from the request to
the last one), ``verify`` (a response's or a refinement's verdict), ``critique`` (a
request to the critic and back), ``refine`` (building a refinement prompt and sampling the
refinement), ``verify_refinement``; a span whose work was thrown away (a speculative
refinement of a group that turned out to pass) is marked ``wasted``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAGES = ("sample", "verify", "critique", "refine", "verify_refinement")
# metrics.jsonl's time/<name> of each stage: a refinement's verdict is verification time
METRIC_NAME = {"verify_refinement": "verify"}


@dataclass
class Span:
    group: int
    stage: str
    start: float
    end: float
    wasted: bool = False

    def as_list(self) -> list[Any]:
        """Compact form for timeline.jsonl: [group, stage, start ms, end ms, wasted]."""
        return [
            self.group,
            self.stage,
            round(self.start * 1e3, 1),
            round(self.end * 1e3, 1),
            int(self.wasted),
        ]


@dataclass
class Clock:
    """Seconds since the rollout started, and the spans recorded so far."""

    t0: float = field(default_factory=time.perf_counter)
    spans: list[Span] = field(default_factory=list)

    def now(self) -> float:
        return time.perf_counter() - self.t0

    @contextmanager
    def span(self, group: int, stage: str) -> Iterator[Span]:
        """Record ``stage`` of ``group`` around the block (also when it is cancelled)."""
        s = Span(group, stage, self.now(), 0.0)
        try:
            yield s
        finally:
            s.end = self.now()
            self.spans.append(s)


def stage_seconds(spans: Sequence[Span], wall: float) -> dict[str, float]:
    """Wall seconds of the rollout charged to each stage: at every instant, the earliest
    stage (in :data:`STAGES` order) that some group is in gets the time, so work hidden
    behind an earlier stage (a critique while other groups still sample) costs nothing, and
    the stages add up to the time some stage was running (at most ``wall``). ``rollout``
    is ``wall`` itself. This is what the serial rollout's stage times were: the time the
    step spent waiting for each stage."""
    rank = {stage: i for i, stage in enumerate(STAGES)}
    out = {METRIC_NAME.get(s.stage, s.stage): 0.0 for s in spans}
    events = sorted(
        (t, delta, rank[s.stage])
        for s in spans
        if s.end > s.start
        for t, delta in ((s.start, 1), (s.end, -1))
    )
    running = [0] * len(STAGES)  # spans open now, per stage
    previous = 0.0
    for t, delta, r in events:  # a sweep: the open spans change only at these instants
        first = next((i for i, n in enumerate(running) if n), None)
        if first is not None:
            stage = STAGES[first]
            out[METRIC_NAME.get(stage, stage)] += t - previous
        running[r] += delta
        previous = t
    out["rollout"] = wall
    return out


def shift(spans: Sequence[Span], groups: int) -> list[Span]:
    """The spans with their group ids moved by ``groups`` (merging ranks' rollouts)."""
    return [Span(s.group + groups, s.stage, s.start, s.end, s.wasted) for s in spans]


COLOURS = {
    "sample": "#4c72b0",
    "verify": "#55a868",
    "critique": "#c44e52",
    "refine": "#dd8452",
    "verify_refinement": "#8c8c8c",
}


REFINEMENT_LANE = {"critique", "refine", "verify_refinement"}


def _draw_panel(ax, spans: Sequence[Span], title: str) -> None:
    """A row per group: its samples and their verdicts above, its critiques, refinements
    and their verdicts below."""
    groups = sorted({s.group for s in spans})
    row = {g: i for i, g in enumerate(groups)}
    for s in spans:
        y = row[s.group] + (0.19 if s.stage in REFINEMENT_LANE else -0.19)
        ax.barh(y, max(s.end - s.start, 0.004), left=s.start, height=0.34,
                color=COLOURS[s.stage], alpha=0.45 if s.wasted else 0.95,
                hatch="//" if s.wasted else None, edgecolor="black" if s.wasted else "none",
                linewidth=0.3)  # fmt: skip
    ax.set_yticks(range(len(groups)), [f"group {g}" for g in groups])
    ax.set_ylim(len(groups) - 0.5, -0.5)
    ax.set_title(title, fontsize=10)


def draw_timeline(panels: Sequence[tuple[str, Sequence[Span]]], out: Path) -> Path:
    """A PNG of one or more steps (one panel each, on one time axis): a row per group, a
    bar per span coloured by stage (hatched when its work was thrown away)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    heights = [1 + 0.45 * len({s.group for s in spans}) for _, spans in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 1.1 + sum(heights)), sharex=True,
                             height_ratios=heights, squeeze=False)  # fmt: skip
    for ax, (title, spans) in zip(axes[:, 0], panels, strict=True):
        _draw_panel(ax, spans, title)
    axes[-1, 0].set_xlabel("seconds since the step's first sample request")
    handles = [Patch(color=c, label=name) for name, c in COLOURS.items()]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="wasted"))
    fig.legend(handles=handles, loc="lower center", ncols=6, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


PIPELINE_COLOURS = {"wait": "#c44e52", "update": "#4c72b0", "sync": "#8c8c8c"}


def read_pipeline(run_dir: Path, last: int = 6) -> list[list[Any]]:
    """The pipeline's lanes ``[lane, label, start, end]`` of the last ``last`` steps of a
    run (``rollout.max_staleness >= 1``); empty for an on-policy run."""
    import json

    path = Path(run_dir) / "timeline.jsonl"
    if not path.exists():
        return []
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [e for x in lines[-last:] for e in x.get("pipeline", [])]


def draw_pipeline(events: Sequence[Sequence[Any]], title: str, out: Path) -> Path:
    """Who waits for whom across steps: the trainer's lane (waiting for rows, updating,
    pushing weights) above, each step's rollout below (on two rows, so that rollouts in
    flight together are both seen), on one time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    t0 = min(e[2] for e in events)
    fig, ax = plt.subplots(figsize=(9, 2.4))
    for lane, label, start, end in events:
        if lane == "trainer":
            ax.barh(0, max(end - start, 0.004), left=start - t0, height=0.6,
                    color=PIPELINE_COLOURS[label])  # fmt: skip
            continue
        y = 1 + int(label) % 2 * 0.7
        ax.barh(y, end - start, left=start - t0, height=0.6, color="#55a868")
        ax.text(start - t0 + 0.02, y, f"step {label}", va="center", fontsize=7)
    ax.set_yticks([0, 1.35], ["trainer", "rollouts"])
    ax.set_ylim(2.1, -0.5)
    ax.set_xlabel("seconds")
    ax.set_title(title, fontsize=10)
    handles = [Patch(color=c, label=f"trainer: {n}") for n, c in PIPELINE_COLOURS.items()]
    handles.append(Patch(color="#55a868", label="rollout of a step"))
    fig.legend(handles=handles, loc="lower center", ncols=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def read_step(run_dir: Path, step: int | None = None) -> tuple[int, list[Span]]:
    """(step, spans) of ``step`` (default: the last) from a run's timeline.jsonl."""
    import json

    path = Path(run_dir) / "timeline.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    chosen = [x for x in lines if step is None or x["step"] == step]
    if not chosen:
        raise SystemExit(f"{path}: no step {step} (steps {lines[0]['step']}-{lines[-1]['step']})")
    last = chosen[-1]
    spans = [Span(g, stage, a / 1e3, b / 1e3, bool(w)) for g, stage, a, b, w in last["spans"]]
    return last["step"], spans


def main(argv: list[str] | None = None) -> None:
    """python -m cgrpo.train.timeline RUN_DIR [RUN_DIR ...] [--step N] [--out FILE.png];
    ``--pipeline STEPS``: the pipeline's lanes of one run's last STEPS steps"""
    import argparse

    p = argparse.ArgumentParser(
        description="Draw one step of the rollout timeline of one run (or several, stacked)."
    )
    p.add_argument("run_dir", type=Path, nargs="+")
    p.add_argument("--step", type=int, help="default: the last step")
    p.add_argument("--out", type=Path, help="default: RUN_DIR/timeline-step-N.png")
    p.add_argument("--pipeline", type=int, metavar="STEPS",
                   help="draw the pipeline's lanes of the last STEPS steps instead")  # fmt: skip
    args = p.parse_args(argv)
    if args.pipeline:
        run_dir = args.run_dir[0]
        events = read_pipeline(run_dir, args.pipeline)
        if not events:
            raise SystemExit(f"{run_dir}: no pipeline lanes (rollout.max_staleness: 0)")
        out = args.out or run_dir / "pipeline-timeline.png"
        print(draw_pipeline(events, run_dir.name, out))
        return
    panels = []
    for run_dir in args.run_dir:
        step, spans = read_step(run_dir, args.step)
        panels.append((f"{run_dir.name}, step {step}", spans))
    out = args.out or args.run_dir[0] / f"timeline-step-{step}.png"
    draw_timeline(panels, out)
    print(out)


if __name__ == "__main__":
    main()
