"""What each logged metric is to a reader: the quantity its axis is labelled with (one unit
per axis: a share of 0-1 is never drawn on a gradient norm's axis) and which direction is
better.

The direction is declared here, beside the names the trainer logs, so that ``cgrpo
report``'s summary takes a loss's minimum and a reward's maximum, and says final, min
and max for a diagnostic that has no better direction (entropy, KL, gradient norm, an RL
surrogate loss: its value is not a score). No heavy imports: the report reads this
without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal

Better = Literal["higher", "lower"] | None


@dataclass(frozen=True)
class MetricInfo:
    """``axis``: the y-axis label, quantity and unit (metrics sharing it share an axis);
    ``better``: "higher", "lower" or None (a diagnostic: no direction is better)."""

    axis: str
    better: Better = None


SHARE = "share (0-1)"
SECONDS = "seconds"
NATS = "nats per token"

# first match wins: exact names before the patterns that would also match them
METRICS: tuple[tuple[str, MetricInfo], ...] = (
    ("reward/group_pass_rate", MetricInfo(SHARE, "higher")),
    ("reward/*/group_pass_rate", MetricInfo(SHARE, "higher")),
    ("reward/*", MetricInfo("mean reward", "higher")),
    ("refine/success_rate*", MetricInfo(SHARE, "higher")),
    ("refine/*/success_rate", MetricInfo(SHARE, "higher")),
    ("refine/token_prob_mean", MetricInfo("probability of refinement tokens")),
    ("refine/shaped_weight_mean", MetricInfo("shaped weight f(p)")),
    ("refine/*", MetricInfo("refinements per step")),
    ("groups/rescued_share", MetricInfo(SHARE, "higher")),
    ("groups/refined_share", MetricInfo(SHARE)),
    ("critique/valid_share", MetricInfo(SHARE, "higher")),
    ("demonstration/token_prob_mean", MetricInfo("probability of demonstration tokens")),
    ("demonstration/shaped_weight_mean", MetricInfo("shaped weight f(p)")),
    ("demonstration/count", MetricInfo("demonstrations per step")),
    ("fine_tune/rows", MetricInfo("rows per step")),
    ("update/skipped_empty", MetricInfo("updates skipped")),
    ("groups/all_failed_share", MetricInfo(SHARE, "lower")),
    ("advantage/zero_groups_share", MetricInfo(SHARE, "lower")),
    ("advantage/*", MetricInfo("advantage")),
    ("eval/*/problems", MetricInfo("problems")),
    ("eval/problems", MetricInfo("problems")),
    ("eval/*length_mean", MetricInfo("tokens")),
    ("eval/*truncated_share", MetricInfo(SHARE, "lower")),
    ("eval/*score", MetricInfo("score (share correct)", "higher")),
    ("eval/*", MetricInfo("accuracy (share correct)", "higher")),
    ("entropy/*", MetricInfo(NATS)),
    ("kl/*", MetricInfo(NATS)),
    ("clip/fraction", MetricInfo("share of tokens clipped")),
    ("ratio/*", MetricInfo("importance ratio")),
    ("update/grad_norm", MetricInfo("gradient norm (L2)")),
    ("update/lr", MetricInfo("learning rate")),
    ("update/skipped_nonfinite", MetricInfo("updates skipped", "lower")),
    ("*/token_utilization", MetricInfo(SHARE, "higher")),  # update/, policy/: real / processed
    ("loss/*", MetricInfo("loss")),
    ("sampler/*", MetricInfo("log-prob difference (nats)", "lower")),
    ("policy/sync_logprob_diff_max", MetricInfo("log-prob difference (nats)", "lower")),
    ("critique/cost", MetricInfo("USD", "lower")),
    ("critique/latency_s_*", MetricInfo(SECONDS, "lower")),
    ("critique/verdict_agreement", MetricInfo(SHARE, "higher")),
    ("critique/failed", MetricInfo("critiques per step", "lower")),
    ("critique/*tokens", MetricInfo("tokens")),
    ("critique/length_chars_mean", MetricInfo("characters")),
    ("critique/*", MetricInfo("critiques per step")),
    ("time/*", MetricInfo(SECONDS, "lower")),
    ("pipeline/*_wait_s", MetricInfo(SECONDS, "lower")),
    ("pipeline/staleness_*", MetricInfo("weight versions behind the trainer")),
    ("pipeline/drift_*", MetricInfo("log-prob difference (nats)")),
    ("pipeline/*", MetricInfo("per step", "lower")),
    ("throughput/*", MetricInfo("tokens per second", "higher")),
    ("length/*_share", MetricInfo(SHARE, "lower")),
    ("length/*", MetricInfo("tokens")),
    ("verify/no_answer_share", MetricInfo(SHARE, "lower")),
    ("verify/*", MetricInfo("responses per step", "lower")),
    ("sft/loss", MetricInfo("loss", "lower")),
    ("sft/lr", MetricInfo("learning rate")),
    ("sft/grad_norm", MetricInfo("gradient norm (L2)")),
)


def metric_info(key: str) -> MetricInfo:
    """What ``key`` is; a metric nobody declared (a plugin's) gets its own name as its
    axis label and no direction."""
    for pattern, info in METRICS:
        if fnmatchcase(key, pattern):
            return info
    return MetricInfo(key)
