"""The report's panels: which metrics each figure draws, how they are split into axes
(one quantity per axis, from :mod:`cgrpo.train.metric_info`; evaluation as one small
multiple per benchmark; seconds per stage as one stacked area chart per run), and why a
panel or a metric is left out. Plain Python: nothing here draws."""

from __future__ import annotations

from dataclasses import dataclass

from cgrpo.report.reading import Run
from cgrpo.train.metric_info import metric_info


@dataclass(frozen=True)
class Panel:
    """One figure: its title, the metrics drawn on it and how."""

    name: str  # file name stem
    title: str
    metrics: tuple[str, ...]  # exact keys; a key ending in "/" takes every key under it
    cumulative: tuple[str, ...] = ()  # drawn as running sums (e.g. money spent)
    stacked: bool = False  # one stacked area chart per run (seconds per stage)
    exclude: tuple[str, ...] = ()  # key endings a prefix entry leaves out
    # with nested keys (eval/<benchmark>/...), a prefix entry keeps only those ending so:
    # nine benchmarks x eight metrics would bury the one number each is reported by
    headline: str = ""
    per_set: bool = False  # one axis per evaluation set (small multiples)
    smooth: bool = True  # per-step noise; evaluations (every N steps) are drawn as they are
    zero_is_empty: bool = False  # a metric that is 0 at every step has nothing to show
    zero_why: str = ""  # why it may be 0 throughout
    absent: str = ""  # why a run logs none of these metrics
    log_y: bool = False  # values spanning decades


@dataclass(frozen=True)
class Axis:
    """One axis of a panel: its title, y label and metrics."""

    title: str
    ylabel: str
    metrics: tuple[str, ...]


PANELS = (
    Panel("reward", "Reward", ("reward/initial_mean", "reward/refinement_kept_mean")),
    Panel(
        "refinement",
        "Refinement success and rescued all-failed groups",
        ("refine/success_rate", "groups/rescued_share", "groups/all_failed_share"),
        absent="plain GRPO refines nothing: algorithm.refinements_per_prompt: 0",
    ),
    Panel(
        "zero_advantage", "Share of groups with zero advantage", ("advantage/zero_groups_share",)
    ),
    Panel(
        "eval",
        "Evaluation",
        ("eval/",),
        exclude=("problems", "length_mean", "truncated_share"),
        headline="/score",
        per_set=True,
        smooth=False,
        absent="evaluation is off: eval.every: 0",
    ),
    Panel(
        "entropy",
        "Entropy per kind: initial, refinement and demonstration tokens",
        ("entropy/initial", "entropy/refinement", "entropy/demonstration"),
    ),
    Panel(
        "length",
        "Response length per kind",
        ("length/initial_mean", "length/refinement_mean", "length/demonstration_mean"),
    ),
    Panel(
        "persistent_failures",
        "Persistent failures: valid critiques, correct refinements, problems refined",
        ("critique/valid_share", "refine/success_rate", "groups/refined_share"),
        absent="nothing was critiqued: algorithm.refinements_per_prompt: 0",
    ),
    Panel(
        "shaping",
        "Refinement-token probability and shaped weight",
        ("refine/token_prob_mean", "refine/shaped_weight_mean"),
        absent="no refinement tokens were trained on",
    ),
    Panel(
        "update",
        "Update health",
        ("clip/fraction", "kl/mean", "update/grad_norm"),
        zero_is_empty=True,
        zero_why="nothing was clipped: with one update per rollout the ratio is 1",
    ),
    Panel(
        "mismatch",
        "Sampler vs trainer log-prob difference",
        ("sampler/logprob_diff_max", "sampler/logprob_diff_mean", "policy/sync_logprob_diff_max"),
        log_y=True,
    ),
    Panel(
        "critic",
        "Critic: cost, latency, failures",
        ("critique/cost", "critique/latency_s_mean", "critique/failed"),
        cumulative=("critique/cost",),
        zero_is_empty=True,
        zero_why="rule-based critiques cost nothing and take no time",
        absent="nothing was critiqued: plain GRPO",
    ),
    Panel("time", "Seconds per stage", ("time/",), stacked=True),
)
# time/step is the sum of the stages and time/rollout of the rollout's; time/eval is drawn
# with evaluation's own cadence
_NOT_A_STAGE = {"time/step", "time/rollout", "time/eval", "time/eval_verify"}
RULE_BASED_CRITICS = ("ground_truth", "indicative")
SET_TITLES = {"avg": "average of all benchmarks", "avg_math": "average of math benchmarks"}


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
            elif panel.headline:  # one set: its score repeats accuracy or avg@k
                found = [k for k in found if not k.endswith(panel.headline)] or found
            if panel.stacked:
                found = [k for k in found if k not in _NOT_A_STAGE]
            out += [k for k in found if k not in out]
        elif m in keys and m not in out:
            out.append(m)
    return out


def _all_zero(runs: list[Run], metric: str) -> bool:
    values = [v for r in runs for v in r.series(metric)[1]]
    return bool(values) and not any(values)


def plan(
    runs: list[Run], only: list[str] | None = None
) -> tuple[list[tuple[Panel, list[str]]], list[str]]:
    """``(panels to draw with their metrics, lines saying what was left out and why)``.
    ``only``: one panel per listed metric instead of the defaults."""
    keys = set().union(*(r.keys() for r in runs)) if runs else set()
    chosen = [Panel(m.replace("/", "_"), m, (m,)) for m in only] if only else list(PANELS)
    drawn, left = [], []
    for panel in chosen:
        metrics = [m for m in expand(panel, keys) if any(r.series(m)[0] for r in runs)]
        zero = [m for m in metrics if panel.zero_is_empty and _all_zero(runs, m)]
        if zero:
            metrics = [m for m in metrics if m not in zero]
            left.append(
                f"{panel.title}: {', '.join(zero)} 0 at every step{_zero_note(panel, runs)}"
            )
        if metrics:
            drawn.append((panel, metrics))
        elif not zero:
            listed = ", ".join(m + "..." if m.endswith("/") else m for m in panel.metrics)
            why = f" ({panel.absent})" if panel.absent else ""
            left.append(f"{panel.title}: no run logged {listed}{why}")
    return drawn, left


def _zero_note(panel: Panel, runs: list[Run]) -> str:
    """Why a metric of ``panel`` may be 0 throughout; for the critic panel, which runs'
    critics are rule-based."""
    if panel.name == "critic":
        rule = sorted({r.critic for r in runs if r.critic in RULE_BASED_CRITICS})
        return f" (critic {', '.join(rule)}: {panel.zero_why})" if rule else ""
    return f" ({panel.zero_why})" if panel.zero_why else ""


def panels_with_data(
    runs: list[Run], only: list[str] | None = None
) -> list[tuple[Panel, list[str]]]:
    """Each panel with the metrics some run logged; panels with none are left out."""
    return plan(runs, only)[0]


def axes(panel: Panel, metrics: list[str], runs: int = 1) -> list[Axis]:
    """The axes of ``panel``: one per evaluation set (``per_set``); else for one run one per
    quantity (metrics that share a y label share an axis, told apart by colour), and for
    several runs one per metric (colour is the run's), in the order the metrics come."""

    def group(m: str) -> str:
        if panel.per_set:
            return _set_of(m)
        return m if runs > 1 else metric_info(m).axis

    groups: dict[str, list[str]] = {}
    for m in metrics:
        groups.setdefault(group(m), []).append(m)
    out = []
    for key, members in groups.items():
        ylabel = metric_info(members[0]).axis
        if panel.per_set:
            title = SET_TITLES.get(key, key)
        elif len(members) == 1:
            title = members[0] + (" (cumulative)" if members[0] in panel.cumulative else "")
        else:
            title = ""
        out.append(Axis(title, ylabel, tuple(members)))
    if panel.per_set:  # the macro averages first, then the benchmarks by name
        first = [a for a in out if a.title in SET_TITLES.values()]
        out = first + sorted((a for a in out if a not in first), key=lambda a: a.title)
    return out


def _set_of(metric: str) -> str:
    """The evaluation set of an ``eval/...`` key: its benchmark, or the held-out problems."""
    parts = metric.split("/")
    return parts[1] if len(parts) > 2 else "held-out problems"
