"""The per-group rollout against hand-computed outcomes: which responses each refine rule
critiques (whether the groups run freely, stream their responses or go in lock step), which
K refinements are kept and where their rows go, the weight version of every row, and what
a failure or a cancellation inside one group does to the step.

The fakes (tests/unit/test_rollout_groups.py) stand where the order of events must be
controlled; the real samplers run the same code in tests/integration and tests/vllm.
Groups (G = 3): even groups answer right, odd groups wrong, group 4 [wrong, right, wrong].
"""

import asyncio
import logging
import random
from concurrent.futures import Future

import pytest

from cgrpo.train.metrics import sample_lines
from cgrpo.train.rollout import RolloutSettings, rollout, rollout_async
from cgrpo.types import Completion, Problem, SamplingParams
from tests.unit.test_rollout_groups import (
    REFINEMENT,
    BatchPolicy,
    Critic,
    Prompts,
    Sampler,
    Streaming,
    Verifier,
    run,
    settings,
)

RIGHT, WRONG = [1, 2], [0, 2]  # a refinement's token ids: its first token says its verdict


def critiqued(ro) -> list[tuple[int, int]]:
    """(group, response) of every initial response that got a critique."""
    g = 3
    return [(r.group, k % g) for k, r in enumerate(ro.records[: 5 * g]) if r.critique]


FAILED = [(1, 0), (1, 1), (1, 2), (3, 0), (3, 1), (3, 2)]  # groups 1 and 3: every response


@pytest.mark.parametrize("backend", [Sampler, Streaming, BatchPolicy])
@pytest.mark.parametrize(
    ("refine", "cap", "want"),
    [
        # all: every response of every group; with cap 2 responses 0 and 1 of each
        ("all", None, [(p, j) for p in range(5) for j in range(3)]),
        ("all", 2, [(p, j) for p in range(5) for j in range(2)]),
        # failed_groups: groups 1 and 3 (group 4 has a right response), first one with cap 1
        ("failed_groups", None, FAILED),
        ("failed_groups", 1, [(1, 0), (3, 0)]),
        # failed_responses: groups 1 and 3, and group 4's wrong responses 0 and 2; with cap
        # 1 group 4's response 2 is not critiqued although it is verified before response 1
        ("failed_responses", None, [*FAILED, (4, 0), (4, 2)]),
        ("failed_responses", 1, [(1, 0), (3, 0), (4, 0)]),
    ],
)
def test_each_rule_critiques_the_responses_it_names_whatever_the_backend(
    backend, refine, cap, want
):
    log: list = []
    ro = run(backend(log), log, refine=refine, cap=cap)
    assert critiqued(ro) == want
    assert len(ro.critiques) == len(want)  # each asked once
    assert [r.parent for r in ro.records if r.kind == "refinement"] == [p * 3 + j for p, j in want]


class Grading(Sampler):
    """Refinements of group p are right for response p % 3 only, with token ids saying so
    and the next weight version (a sync between the samples and the refinements)."""

    async def sample(self, prompt_ids, params, seed=None):
        if prompt_ids[0] != REFINEMENT:
            return await super().sample(prompt_ids, params, seed)
        p, j = prompt_ids[1], prompt_ids[2]
        ok = j == p % 3
        text = f"{'right' if ok else 'wrong'} refined {j}"
        return [Completion(RIGHT if ok else WRONG, [-0.2, -0.1], text, "stop", weight_version=8)]


def settings_k(k: int, fallback: str) -> RolloutSettings:
    return RolloutSettings(
        samples_per_prompt=3,
        refinements_per_prompt=k,
        refine="all",
        max_refinements_generated=None,
        fallback=fallback,
        sampling=SamplingParams(n=3, max_new_tokens=4),
    )


def two_groups(fallback: str, k: int = 2):
    problems = [Problem(id=str(p), question=f"q{p}", answer="right") for p in range(2)]
    return rollout(
        problems, [[p, 7, 8] for p in range(2)], policy=Grading([]), verifier=Verifier(),
        critic=Critic([]), prompts=Prompts(), settings=settings_k(k, fallback), eos_ids=[2],
        rng_key="k",
    )  # fmt: skip


# group 0's refinements (of responses 0, 1, 2) are [right, wrong, wrong], group 1's
# [wrong, right, wrong]; K = 2: the right one first, then the fallback's pick of the rest
# random: random.Random("k:0").sample([1, 2], 1) == [2], random.Random("k:1").sample([0, 2],
# 1) == [2] (the prompt's key: rng_key and its global index)
@pytest.mark.parametrize(
    ("fallback", "kept"),
    [("first", [[0, 1], [1, 0]]), ("none", [[0], [1]]), ("random", [[0, 2], [1, 2]])],
)
def test_k_refinements_are_kept_correct_first_then_by_the_fallback(fallback, kept):
    assert random.Random("k:0").sample([1, 2], 1) == [2]  # the figures above
    assert random.Random("k:1").sample([0, 2], 1) == [2]
    ro = two_groups(fallback)
    refinements = [r for r in ro.records if r.kind == "refinement"]
    assert [r.parent for r in refinements] == [0, 1, 2, 3, 4, 5]  # every response, in order
    for p in range(2):
        mine = [r for r in refinements if r.group == p]
        assert [j for j, r in enumerate(mine) if r.kept] == sorted(kept[p])
    # rows: each group's 3 initial responses (rewards 1, 1, 1 and 0, 0, 0), then its kept
    # refinements in the order selection kept them, trained on the original prompt
    want = []
    for p, initial in ((0, 1.0), (1, 0.0)):
        want += [(p, False, initial, 7)] * 3
        want += [(p, True, float(j == p), 8) for j in kept[p]]
    got = [(r.group, r.is_refinement, r.reward, r.weight_version) for r in ro.rows]
    assert got == want
    assert all(r.prompt_ids == [r.group, 7, 8] for r in ro.rows)
    assert next(r.response_ids for r in ro.rows if r.is_refinement) == RIGHT  # group 0's 0
    assert (ro.groups_all_failed, ro.groups_rescued) == (1, 1)
    # every kept record points at its row, every other refinement at none
    assert all((r.row is not None) == r.kept for r in ro.records)
    assert all(ro.rows[r.row].reward == r.verdict.score for r in ro.records if r.kept)


def test_each_sample_line_has_the_weight_version_that_sampled_it():
    ro = two_groups("first")
    lines = sample_lines(1, ro, 100)
    versions = sorted((line["kind"], line["weight_version"]) for line in lines)
    assert versions == [("initial", 7)] * 6 + [("refinement", 8)] * 6


class AsyncCritic(Critic):
    """The API critic's interface; group ``bad`` gets a failed future."""

    def __init__(self, log, bad: str):
        super().__init__(log)
        self.bad = bad

    def critique_async(self, requests):
        future = Future()
        if requests[0].problem.id == self.bad:
            future.set_exception(RuntimeError("critic died"))
        else:
            future.set_result(self.critique(requests))
        return future


class BadCritic(Critic):
    def critique(self, requests):
        if any(r.problem.id == "3" for r in requests):
            raise RuntimeError("critic died")
        return super().critique(requests)


class Watched(Sampler):
    """Group 0's samples wait until cancelled (nothing releases them); logs it."""

    def __init__(self, log):
        super().__init__(log, hold=(0,), release_on_refinement=False)

    async def sample(self, prompt_ids, params, seed=None):
        try:
            return await super().sample(prompt_ids, params, seed)
        except asyncio.CancelledError:
            self.log.append(("cancelled", *prompt_ids[:2]))
            raise


class Stalled(Streaming):
    """Group 4 streams its responses 0 and 2, never 1; its refinements never finish.
    Cancellations are logged."""

    async def sample_each(self, prompt_ids, params, seed=None):
        try:
            async for item in super().sample_each(prompt_ids, params, seed):
                yield item
        except asyncio.CancelledError:
            self.log.append(("cancelled", prompt_ids[0]))
            raise

    async def sample(self, prompt_ids, params, seed=None):  # refinements only
        try:
            if prompt_ids[:2] == [REFINEMENT, 4]:
                self.log.append(("refine", 4, prompt_ids[2]))
                await asyncio.Event().wait()
            return await Sampler.sample(self, prompt_ids, params, seed)
        except asyncio.CancelledError:
            self.log.append(("cancelled", *prompt_ids[:2]))
            raise


def inside_a_loop(policy, log, critic, until=None, **kw):
    """One step as a task on a loop that outlives it (a server's, a pipelined trainer's),
    cancelled once ``until`` is logged: its exception and the tasks it left running."""
    problems = [Problem(id=str(p), question=f"q{p}", answer="right") for p in range(5)]

    async def main():
        step = asyncio.ensure_future(
            rollout_async(
                problems, [[p, 7, 8] for p in range(5)], policy=policy, verifier=Verifier(),
                critic=critic, prompts=Prompts(), settings=settings(**kw), eos_ids=[2],
                rng_key="k",
            )
        )  # fmt: skip
        while until is not None and until not in log:
            await asyncio.sleep(0)
        if until is not None:
            step.cancel()
        error = None
        try:
            await step
        except BaseException as exc:  # CancelledError included: returned
            error = exc
        me = asyncio.current_task()
        return error, [t for t in asyncio.all_tasks() if t is not me and not t.done()]

    return asyncio.run(main())


@pytest.mark.parametrize("critic", [BadCritic, AsyncCritic])
def test_a_critic_error_in_one_group_fails_the_step_and_cancels_the_others(critic):
    """Group 3's critique fails while group 0 still samples: the step raises the critic's
    error at once (not after group 0's 10 s wait), group 0's request is cancelled and no
    task of the step goes on running on the loop."""
    log: list = []
    bad = critic(log) if critic is BadCritic else critic(log, "3")
    error, left = inside_a_loop(Watched(log), log, bad)
    assert isinstance(error, RuntimeError) and "critic died" in str(error)
    assert left == []
    assert ("cancelled", 0, 7) in log and ("sampled", 0) not in log


@pytest.mark.parametrize("failing", ["critic", "refinement"])
def test_a_failure_in_one_group_in_lock_step_fails_the_step(failing):
    """Lock step (a batch-only backend): the failed group leaves, the others are released
    and cancelled, nothing waits forever."""

    class Broken(BatchPolicy):
        def generate(self, prompts, params, seeds=None):
            if failing == "refinement" and prompts[0][0] == REFINEMENT:
                raise RuntimeError("engine died")
            return super().generate(prompts, params, seeds)

    log: list = []
    critic = AsyncCritic(log, "3" if failing == "critic" else "none")
    with pytest.raises(RuntimeError, match="died"):
        run(Broken(log), log, critic=critic)


def test_a_cancelled_step_cancels_every_request_in_flight():
    """Cancelling the step (Ctrl-C, a failed rank) while group 4 still samples cancels its
    sampling and the refinements of its responses 0 and 2, started early (refine: all):
    no task of the step is left running."""
    log: list = []
    error, left = inside_a_loop(Stalled(log), log, Critic(log), ("refine", 4, 2), refine="all")
    assert isinstance(error, asyncio.CancelledError)
    assert left == []
    assert ("cancelled", 4) in log
    assert log.count(("cancelled", REFINEMENT, 4)) == 2


def test_a_failed_speculative_critique_of_a_group_that_passes_is_discarded(caplog):
    """Group 4's speculative critique fails, then its correct response arrives: the rule
    would never have asked, so the step goes on as without speculation (and says so)."""
    caplog.set_level(logging.WARNING, logger="cgrpo.train.rollout")
    spec = run(Streaming([]), [], speculative=True, cap=1, critic=AsyncCritic([], "4"))
    plain = run(Streaming([]), [], speculative=False, cap=1, critic=AsyncCritic([], "4"))
    assert [r.critique is not None for r in spec.records] == [
        r.critique is not None for r in plain.records
    ]
    assert [(r.group, r.reward) for r in spec.rows] == [(r.group, r.reward) for r in plain.rows]
    assert spec.speculative["wasted_critiques"] == 1.0
    assert "group 4, response 0, failed before its group passed" in caplog.text


def test_a_backend_that_returns_too_few_completions_is_named():
    class Short(Sampler):
        async def sample(self, prompt_ids, params, seed=None):
            return (await super().sample(prompt_ids, params, seed))[:1]

    from cgrpo.errors import TrainingError

    with pytest.raises(
        TrainingError, match=r"Short: sample\(\) returned 1 completions for a request of n=3"
    ):
        run(Short([]), [])
