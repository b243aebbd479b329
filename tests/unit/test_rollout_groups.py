"""The per-group rollout: each group's story runs on its own, a failed group's critique and
refinement go out while other groups still sample, speculation is cancelled and counted,
lock step reproduces the serial batches, and the result never depends on the timing.

The samplers, verifier, critics and prompt builder here are small fakes that log what
happens when and wait on events the test controls (the point is the order of events, which
real components cannot show deterministically); the real ones run the same code in
tests/integration (hf, the API critic against a local server) and tests/vllm (the engine).
"""

import asyncio
from concurrent.futures import Future

import pytest

from cgrpo.train.metrics import rollout_metrics, sample_lines
from cgrpo.train.rollout import RolloutSettings, rollout
from cgrpo.types import Completion, Critique, Problem, SamplingParams, Verdict

G = 3
REFINEMENT = 99  # first token of a refinement prompt


def completion(text: str, version: int | None = None) -> Completion:
    return Completion([5, 6, 2], [-0.5, -0.5, -0.1], text, "stop", weight_version=version)


def answers(p: int) -> list[str]:
    """Group p's samples: even groups right, odd groups wrong; group 4 half right."""
    if p == 4:
        return ["wrong 0", "right 1", "wrong 2"]
    return [f"{'right' if p % 2 == 0 else 'wrong'} {j}" for j in range(G)]


class Sampler:
    """An asynchronous backend. ``hold[p]`` is an event group p's samples wait for;
    ``release_on_refinement`` sets every held event when the first refinement arrives, so
    a held group can only finish if a refinement was requested while it still sampled."""

    batches_continuously = True  # the groups run on their own (like vLLM)

    def __init__(self, log: list, hold: tuple[int, ...] = (), release_on_refinement=True):
        self.log, self.release = log, release_on_refinement
        self.hold = {p: asyncio.Event() for p in hold}

    async def sample(self, prompt_ids, params, seed=None):
        p = prompt_ids[0]
        if p == REFINEMENT:
            self.log.append(("refine", prompt_ids[1], prompt_ids[2]))
            if self.release:
                for event in self.hold.values():
                    event.set()
            return [completion("right refined", 7)]
        self.log.append(("sample", p))
        if p in self.hold:
            await asyncio.wait_for(self.hold[p].wait(), 10)
        self.log.append(("sampled", p))
        return [completion(text, 7) for text in answers(p)][: params.n]


class BatchPolicy:
    """A batch-only plugin backend (generate only): goes through the as_async adapter."""

    def __init__(self, log: list):
        self.log = log

    def generate(self, prompts, params, seeds=None):
        self.log.append(("generate", [p[0] if p[0] != REFINEMENT else p[1:3] for p in prompts]))
        return [
            [completion("right refined")] if p[0] == REFINEMENT else
            [completion(t) for t in answers(p[0])][: params.n]
            for p in prompts
        ]  # fmt: skip

    def sync_weights(self, model):
        pass


class Verifier:
    def verify(self, response: str, problem: Problem) -> Verdict:
        ok = response.startswith("right")
        return Verdict(score=float(ok), correct=ok)


class Critic:
    def __init__(self, log: list):
        self.log = log

    def critique(self, requests):
        self.log.append(("critique", [(r.problem.id, r.response) for r in requests]))
        return [Critique(text=f"fix {r.response}", critic="fake") for r in requests]


class Prompts:
    def refinement_ids(self, problem, response, critique):
        # response j of problem p refines from [99, p, j], 3 + p tokens long
        return [REFINEMENT, int(problem.id), int(response.split()[-1])] + [0] * int(problem.id)


def settings(refine="failed_groups", cap=None, speculative=False, n=G) -> RolloutSettings:
    return RolloutSettings(
        samples_per_prompt=n,
        refinements_per_prompt=1,
        refine=refine,
        max_refinements_generated=cap,
        fallback="first",
        sampling=SamplingParams(n=n, max_new_tokens=4),
        speculative=speculative,
    )


def run(policy, log, groups=5, seed=None, critic=None, **kw):
    problems = [Problem(id=str(p), question=f"q{p}", answer="right") for p in range(groups)]
    return rollout(
        problems,
        [[p, 7, 8] for p in range(groups)],
        policy=policy,
        verifier=Verifier(),
        critic=critic or Critic(log),
        prompts=Prompts(),
        settings=settings(**kw),
        eos_ids=[2],
        rng_key="k",
        seed=seed,
    )


def summary(ro):
    return (
        [(r.group, r.kind, r.completion.text, r.verdict, r.kept, r.row, r.parent,
          r.critique.text if r.critique else None, r.prompt_tokens) for r in ro.records],
        [(r.group, r.response_ids, r.is_refinement, r.reward) for r in ro.rows],
        [c.text for c in ro.critiques],
        (ro.groups_all_failed, ro.groups_rescued, ro.refinements_skipped),
    )  # fmt: skip


def test_a_failed_groups_refinement_is_sampled_while_another_group_still_samples():
    """Group 3 (all wrong) is refined while group 1 is held: group 1 is only released by
    the first refinement request, so the rollout would time out if it waited for every
    group's samples before refining."""
    log: list = []
    ro = run(Sampler(log, hold=(1,)), log)
    assert log.index(("refine", 3, 0)) < log.index(("sampled", 1))
    assert log.index(("sampled", 3)) < log.index(("refine", 3, 0))
    assert ro.groups_all_failed == 2 and ro.groups_rescued == 2


def test_the_result_does_not_depend_on_the_timing_or_the_backend_kind():
    fast = run(Sampler([]), [])
    held = run(Sampler([], hold=(0, 3)), [])
    batch = run(BatchPolicy([]), [])
    assert summary(fast) == summary(held) == summary(batch)
    # groups 1 and 3 fail: every response critiqued (refine: failed_groups), one kept each
    _, rows, crits, counts = summary(fast)
    assert counts == (2, 2, 0)
    assert crits == [f"fix wrong {j}" for j in range(G)] * 2
    assert [r for r in rows if r[2]] == [(1, [5, 6, 2], True, 1.0), (3, [5, 6, 2], True, 1.0)]


@pytest.mark.parametrize("seed", [None, 5])
def test_lock_step_sends_the_serial_rollouts_batches(seed):
    """A backend whose numbers depend on its batches gets one generate call of every
    group's prompt, one critique call of every target in (group, response) order, one
    generate call of every refinement in that order, whatever the arrival order."""
    log: list = []
    run(BatchPolicy(log), log, seed=seed, refine="failed_responses")
    assert log == [
        ("generate", [0, 1, 2, 3, 4]),
        ("critique", [(str(p), f"wrong {j}") for p in (1, 3) for j in range(G)]
         + [("4", "wrong 0"), ("4", "wrong 2")]),
        ("generate", [[p, j] for p in (1, 3) for j in range(G)] + [[4, 0], [4, 2]]),
    ]  # fmt: skip


class Streaming(Sampler):
    """Streams a group's samples one by one (``sample_each``); group 4's response 1 (the
    correct one) waits for ``late``, so its wrong responses are verified first."""

    def __init__(self, log):
        super().__init__(log)
        self.late = asyncio.Event()

    async def sample_each(self, prompt_ids, params, seed=None):
        p = prompt_ids[0]
        self.log.append(("sample", p))
        for j in (0, 2, 1) if p == 4 else range(params.n):
            if p == 4 and j == 1:
                await asyncio.wait_for(self.late.wait(), 10)
            yield j, completion(answers(p)[j])

    async def sample(self, prompt_ids, params, seed=None):
        self.late.set()  # the first refinement lets group 4's correct response arrive
        return await super().sample(prompt_ids, params, seed)


def test_speculation_starts_early_and_a_correct_response_cancels_it():
    log: list = []
    ro = run(Streaming(log), log, speculative=True, cap=1)
    # group 4's wrong response 0 was critiqued (with groups 1 and 3's, in one call of the
    # batching critic) before its correct response 1 arrived
    assert ("critique", [("1", "wrong 0"), ("3", "wrong 0"), ("4", "wrong 0")]) in log
    assert all(r.group != 4 for r in ro.records if r.kind == "refinement")
    assert not any(r.critique for r in ro.records if r.group == 4)
    # group 4's speculation and groups 1 and 3's used ones: 3 started; group 4's refinement
    # request had gone out (it released the correct response), its critique was wasted
    assert ro.speculative == {"started": 3.0, "cancelled_sequences": 1.0, "wasted_critiques": 1.0}
    metrics = rollout_metrics(ro)
    assert metrics["speculative/wasted_critiques"] == 1.0
    # what was kept is what the rule without speculation keeps, critiqued once each
    plain = run(Streaming([]), [], speculative=False, cap=1)
    assert summary(ro) == summary(plain)
    assert sum(1 for e in log if e[0] == "critique" for _ in e[1]) == 3


def test_failed_responses_refine_each_wrong_response_as_it_is_verified():
    """Group 4's wrong responses 0 and 2 are refined before its response 1 is sampled."""
    log: list = []
    run(Streaming(log), log, refine="failed_responses")
    assert log.index(("refine", 4, 0)) < log.index(("refine", 4, 2))
    assert any(("4", "wrong 2") in e[1] for e in log if e[0] == "critique")


def test_async_critic_requests_are_never_cancelled():
    """A critique_async future is shielded: a group's requests go out once per group."""
    calls: list = []

    class AsyncCritic(Critic):
        def critique_async(self, requests):
            future = Future()
            future.set_result(self.critique(requests))
            calls.append(len(requests))
            return future

    run(Sampler([]), [], critic=AsyncCritic([]))
    assert calls == [G, G]


def test_stage_times_weight_versions_and_timeline():
    ro = run(Sampler([]), [])
    assert set(ro.seconds) == {"sample", "verify", "critique", "refine", "rollout"}
    stages = sum(v for k, v in ro.seconds.items() if k != "rollout")
    assert 0 <= stages <= ro.seconds["rollout"] + 1e-9
    assert {s.stage for s in ro.timeline} == {
        "sample",
        "verify",
        "critique",
        "refine",
        "verify_refinement",
    }
    assert all(0 <= s.start <= s.end <= ro.seconds["rollout"] for s in ro.timeline)
    assert {r.weight_version for r in ro.rows} == {7}
    assert {line["weight_version"] for line in sample_lines(1, ro, 100)} == {7}


def test_prompt_lengths_are_recorded_per_sequence_and_averaged():
    """Each record keeps the length of the prompt it was sampled from: the problem's prompt
    (3 tokens here) for initial samples, its refinement prompt for a refinement."""
    ro = run(Sampler([]), [])
    initial = [r for r in ro.records if r.kind == "initial"]
    refinements = [r for r in ro.records if r.kind == "refinement"]
    assert {r.prompt_tokens for r in initial} == {3}
    # groups 1 and 3 fail every sample: G refinements each, prompts of 3 + 1 and 3 + 3
    assert sorted(r.prompt_tokens for r in refinements) == [4] * G + [6] * G
    metrics = rollout_metrics(ro)
    assert metrics["length/prompt_mean"] == 3.0
    assert metrics["length/refinement_prompt_mean"] == 5.0


@pytest.mark.parametrize("failing", ["sampler", "verifier"])
def test_a_failure_in_one_group_fails_the_rollout(failing):
    class Broken(Sampler):
        async def sample(self, prompt_ids, params, seed=None):
            if failing == "sampler" and prompt_ids[0] == 2:
                raise RuntimeError("engine died")
            return await super().sample(prompt_ids, params, seed)

    class BrokenVerifier(Verifier):
        def verify(self, response, problem):
            if failing == "verifier" and problem.id == "2":
                raise RuntimeError("verifier died")
            return super().verify(response, problem)

    problems = [Problem(id=str(p), question="q", answer="right") for p in range(4)]
    with pytest.raises(RuntimeError, match="died"):
        rollout(problems, [[p, 7] for p in range(4)], policy=Broken([]),
                verifier=BrokenVerifier(), critic=Critic([]), prompts=Prompts(),
                settings=settings(), eos_ids=[2], rng_key="k")  # fmt: skip


def test_speculation_is_refused_where_it_could_only_waste():
    """A backend that hands over a group's responses all at once, or keeps the serial
    order, cannot start a refinement before its group is complete."""
    from cgrpo.errors import TrainingError
    from cgrpo.train.rollout_context import check_speculation

    check_speculation(Streaming([]))  # streams each response: fine
    for backend in (Sampler([]), BatchPolicy([])):
        with pytest.raises(TrainingError, match="speculative_refinement"):
            check_speculation(backend)
