"""The report's summary table: per metric, each run's statistics in the metric's own
direction (the maximum of a reward, the minimum of a failure share), plainly final, min
and max for a diagnostic with no better direction, and the mean of seconds (a fastest
step says little)."""

from __future__ import annotations

from cgrpo.report.reading import Run
from cgrpo.train.metric_info import metric_info

SUMMARY_KEYS = (
    "reward/initial_mean",
    "refine/success_rate",
    "groups/rescued_share",
    "advantage/zero_groups_share",
    "eval/accuracy",
    "eval/avg/score",
    "loss/total",
    "time/step",
)


def statistics(key: str) -> tuple[str, ...]:
    """The statistics the summary gives ``key``, by what :func:`metric_info` declares."""
    info = metric_info(key)
    if info.axis == "seconds":
        return ("mean", "final")
    if info.better == "higher":
        return ("final", "best (max)")
    if info.better == "lower":
        return ("final", "best (min)")
    return ("final", "min", "max")


def _value(statistic: str, ys: list[float]) -> float | None:
    if not ys:
        return None
    if statistic == "final":
        return ys[-1]
    if statistic == "mean":
        return sum(ys) / len(ys)
    return max(ys) if "max" in statistic else min(ys)


def summary(runs: list[Run], keys: tuple[str, ...] = SUMMARY_KEYS) -> list[dict[str, object]]:
    """Rows of ``{"metric", "statistic", <run name>: value}``: first each run's last step
    (a step-0 evaluation is not a step), then each key some run logged, one row per
    statistic."""
    last = {r.name: max((int(row["step"]) for row in r.rows), default=0) for r in runs}
    table: list[dict[str, object]] = [{"metric": "step", "statistic": "last", **last}]
    for key in keys:
        values = {r.name: r.series(key)[1] for r in runs}
        if not any(values.values()):
            continue
        for statistic in statistics(key):
            row: dict[str, object] = {"metric": key, "statistic": statistic}
            row |= {name: _value(statistic, ys) for name, ys in values.items()}
            table.append(row)
    return table
