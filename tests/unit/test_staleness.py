"""Row staleness, stale groups and the sampler/trainer gap split by cause, on hand-made
rows (algo/staleness.py), and dropping groups from a rollout (train/pipeline.py)."""

from __future__ import annotations

import pytest

from cgrpo.algo.mixing import TrainRow
from cgrpo.algo.staleness import logprob_gaps, row_staleness, stale_groups, staleness_summary


def row(group, version, group_version=None, refinement=False, old=None, sampler=None):
    r = TrainRow(group, [1], [5, 6], old, refinement, 0.0, sampler_logprobs=sampler)
    r.weight_version, r.group_weight_version = version, group_version
    return r


def test_a_row_is_as_old_as_its_oldest_weights():
    # trainer at version 7: a sample of version 6 is 1 old; a refinement sampled with 7
    # whose group's samples came from 5 is 2 old (its prompt holds a version-5 response)
    assert row_staleness(row(0, 6), 7) == 1
    assert row_staleness(row(0, 7, 5, refinement=True), 7) == 2
    with pytest.raises(ValueError, match="weight version"):
        row_staleness(row(0, None), 7)


def test_groups_with_a_row_past_the_limit_and_the_summary():
    rows = [row(0, 6), row(0, 7, 6, True), row(1, 5), row(1, 6), row(2, 7)]
    assert stale_groups(rows, 7, 1) == {1}  # group 1 holds a row 2 old
    assert stale_groups(rows, 7, 2) == set()
    # ages 1, 1, 2, 1, 0: mean 5/5 = 1.0, max 2
    assert staleness_summary(rows, 7) == {"staleness_mean": 1.0, "staleness_max": 2.0}


def test_the_gap_is_named_by_its_cause():
    # version 3 rows: engine; version 2 rows: drift; refinements have no old log-probs
    same = row(0, 3, old=[-1.0, -2.0], sampler=[-1.0, -2.5])  # gaps 0, 0.5
    older = row(1, 2, old=[-1.0, -1.0], sampler=[-2.0, -1.5])  # gaps 1.0, 0.5
    ref = row(1, 3, 2, refinement=True)
    gaps = logprob_gaps([same, older, ref], 3)
    assert gaps == {"engine_mean": 0.25, "engine_max": 0.5, "drift_mean": 0.75, "drift_max": 1.0}
    assert set(logprob_gaps([same], 3)) == {"engine_mean", "engine_max"}


def test_dropping_groups_reindexes_rows_records_and_counts_wasted_critiques():
    from cgrpo.train.pipeline import drop_groups
    from cgrpo.train.rollout import Record, Rollout
    from cgrpo.types import Completion, Critique, Problem, Verdict

    def rec(group, kind, correct, row=None, parent=None, critique=None, kept=True):
        problem, done = Problem(str(group), "q", "1"), Completion([1], None, "x", "stop")
        verdict = Verdict(float(correct), correct, None)
        return Record(group, problem, kind, done, verdict, critique, kept, row, parent)

    crit = [Critique(f"c{g}", "ground_truth") for g in range(3)]
    records = [
        rec(0, "initial", False, 0, critique=crit[0]),
        rec(1, "initial", False, 2, critique=crit[1]),
        rec(2, "initial", True, 4), rec(0, "refinement", True, 1, 0, crit[0]),
        rec(1, "refinement", False, 3, 1, crit[1]),
    ]  # fmt: skip
    rows = [row(0, 1), row(0, 1), row(1, 1), row(1, 1), row(2, 1)]
    ro = Rollout(rows=rows, records=records, critiques=list(crit[:2]))
    out, lost = drop_groups(ro, {1})
    assert lost == {"rows_dropped": 2.0, "groups_resampled": 1.0, "wasted_critiques": 1.0}
    assert [r.group for r in out.rows] == [0, 0, 1]  # group 2 is now group 1
    assert [(r.group, r.kind, r.row, r.parent) for r in out.records] == [
        (0, "initial", 0, None), (1, "initial", 2, None), (0, "refinement", 1, 0),
    ]  # fmt: skip
    assert out.critiques == [crit[0]]
    # group 0 failed and its kept refinement is right: rescued; the old group 2 passed
    assert (out.groups_all_failed, out.groups_rescued) == (1, 1)
