"""What a metric is to a reader: its axis (quantity and unit) and better direction, and a
rescued share only where refinements could rescue."""

from cgrpo.train.metric_info import metric_info
from cgrpo.train.metrics import rollout_metrics
from cgrpo.train.rollout import Record, Rollout
from cgrpo.types import Completion, Problem, Verdict


def test_directions_and_axes_are_declared_where_metrics_are_named():
    assert metric_info("reward/initial_mean").better == "higher"
    assert metric_info("advantage/zero_groups_share").better == "lower"
    assert metric_info("time/step").better == "lower"
    assert metric_info("loss/total").better is None  # an RL surrogate loss is not a score
    assert metric_info("entropy/initial").better is None
    assert metric_info("eval/math-500/score").axis == "score (share correct)"
    assert metric_info("eval/aime24/truncated_share").better == "lower"
    assert metric_info("clip/fraction").axis != metric_info("update/grad_norm").axis
    assert metric_info("plugin/thing").axis == "plugin/thing"  # undeclared: its own name


def test_plain_grpo_logs_no_rescued_share():
    wrong = Record(0, Problem("p", "q", "1"), "initial", Completion([1], None, "2", "stop"),
                   Verdict(0.0, False))  # fmt: skip
    grpo = Rollout(rows=[], records=[wrong], groups_all_failed=1)
    assert "groups/rescued_share" not in rollout_metrics(grpo)  # nothing could rescue it
    skipped = Rollout(rows=[], records=[wrong], groups_all_failed=1, refinements_skipped=1)
    assert rollout_metrics(skipped)["groups/rescued_share"] == 0.0  # tried, did not fit
