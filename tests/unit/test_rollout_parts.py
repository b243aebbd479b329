"""The pure parts of the per-group rollout: which responses are refinement targets before
their group is complete, the stage times from a timeline, and the gates."""

import asyncio

import pytest

from cgrpo.algo.targets import group_targets, possible_target, sure_target
from cgrpo.train.gates import LockStep, TickGather
from cgrpo.train.timeline import Span, stage_seconds

T, F, U = True, False, None  # correct, wrong, not verified yet


@pytest.mark.parametrize(
    ("correct", "mode", "cap", "want"),
    [
        ([F, T, F], "all", None, [0, 1, 2]),
        ([F, T, F], "all", 2, [0, 1]),
        ([F, T, F], "failed_groups", None, []),
        ([F, F, F], "failed_groups", 1, [0]),
        ([F, T, F], "failed_responses", None, [0, 2]),
        ([T, F, F], "failed_responses", 1, [1]),
    ],
)
def test_group_targets(correct, mode, cap, want):
    assert group_targets(correct, mode, cap) == want


def test_sure_targets_wait_only_for_the_verdicts_that_can_change_them():
    # all: the index alone decides
    assert sure_target([U, F, U], 1, "all", None)
    assert not sure_target([U, U, T], 2, "all", 2)
    # failed_responses without a cap: a wrong response at once
    assert sure_target([U, U, F], 2, "failed_responses", None)
    assert not sure_target([U, U, T], 2, "failed_responses", None)
    # with cap 1, response 2 is the first wrong one only once 0 and 1 are known right
    assert not sure_target([U, T, F], 2, "failed_responses", 1)
    assert sure_target([T, T, F], 2, "failed_responses", 1)
    assert not sure_target([F, T, F], 2, "failed_responses", 1)  # 0 took the only slot
    # failed_groups: never before the whole group is known
    assert not sure_target([F, F, U], 0, "failed_groups", None)
    with pytest.raises(ValueError, match="not verified"):
        sure_target([U, F], 0, "all", None)


def test_possible_targets_are_what_speculation_starts():
    assert possible_target([F, U, U], 0, "failed_groups", 1)
    assert not possible_target([U, F, U], 1, "failed_groups", 1)  # beyond the cap
    assert not possible_target([F, T, U], 0, "failed_groups", None)  # the group passed
    assert possible_target([U, F, F], 2, "failed_groups", None)


def test_stage_seconds_charge_each_instant_to_the_earliest_stage():
    """Group 0 samples 0-4 s; group 1 samples 0-1, is critiqued 1-3 and refined 2-5 (its
    refinement verified 5-5.5). 0-4 is sampling (the critique and refinement hidden behind
    it), 4-5 refinement, 5-5.5 verification; 5.5-6 nothing runs."""
    spans = [
        Span(0, "sample", 0.0, 4.0),
        Span(1, "sample", 0.0, 1.0),
        Span(1, "critique", 1.0, 3.0),
        Span(1, "refine", 2.0, 5.0),
        Span(1, "verify_refinement", 5.0, 5.5),
    ]
    assert stage_seconds(spans, 6.0) == {
        "sample": 4.0, "critique": 0.0, "refine": 1.0, "verify": 0.5, "rollout": 6.0
    }  # fmt: skip


def test_tick_gather_sends_what_is_submitted_together_in_one_call():
    calls = []

    def flush(items):
        calls.append(list(items))
        return [x * 10 for x in items]

    async def main():
        gather = TickGather(flush)
        together = await asyncio.gather(gather.submit([1, 2]), gather.submit([3]))
        later = await gather.submit([4])
        return together, later

    together, later = asyncio.run(main())
    assert together == [[10, 20], [30]] and later == [40]
    assert calls == [[1, 2, 3], [4]]


def test_lock_step_releases_a_stage_when_every_live_group_waits_in_group_order():
    order = []

    async def group(gates: LockStep, g: int, stages: list[str]):
        for stage in stages:
            await gates.reach(stage, g)
            order.append((stage, g))
        gates.leave()

    async def main():
        gates = LockStep(True, 3)
        await asyncio.gather(
            group(gates, 2, ["sample", "critique", "refine"]),
            group(gates, 0, ["sample"]),
            group(gates, 1, ["sample", "critique", "refine"]),
        )

    asyncio.run(main())
    assert order == [("sample", 0), ("sample", 1), ("sample", 2), ("critique", 1),
                     ("critique", 2), ("refine", 1), ("refine", 2)]  # fmt: skip
