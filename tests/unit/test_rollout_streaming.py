"""The rollout's overlap: groups are verified as the backend finishes them and their
critiques go out before the rest of the batch is sampled, with the same result as the
one-batch path.

The policy, verifier, critic and prompt builder here are small fakes that log what
happens when (the point is the order of events, which real components cannot show
deterministically); the real ones run the same code in tests/integration (the hf backend's
generate_stream, the API critic's critique_async against a local OpenAI server).
"""

from concurrent.futures import Future

import pytest

from cgrpo.train.metrics import rollout_metrics
from cgrpo.train.rollout import RolloutSettings, rollout
from cgrpo.types import Completion, Critique, Problem, SamplingParams, Verdict

G = 3


def completion(text: str) -> Completion:
    return Completion(
        token_ids=[5, 6, 2], logprobs=[-0.5, -0.5, -0.1], text=text, finish_reason="stop"
    )


class Policy:
    """Answers prompt p's samples with 'right' when p is even and 'wrong' otherwise, two
    prompts per generate call; refinements always answer 'right'."""

    def __init__(self, log: list, streaming: bool):
        self.log = log
        if streaming:
            self.generate_stream = self._stream

    def _answers(self, prompts, params):
        out = []
        for ids in prompts:
            if ids[0] == 99:  # a refinement prompt
                out.append([completion("right") for _ in range(params.n)])
            else:
                text = "right" if ids[0] % 2 == 0 else "wrong"
                out.append([completion(f"{text} {j}") for j in range(params.n)])
        return out

    def generate(self, prompts, params, seeds=None):
        self.log.append(("generate", len(prompts)))
        return self._answers(prompts, params)

    def _stream(self, prompts, params, seeds=None):
        answers = self._answers(prompts, params)
        for start in range(0, len(prompts), 2):
            self.log.append(("generate", start))
            yield [(p, answers[p]) for p in range(start, min(start + 2, len(prompts)))]

    def sync_weights(self, model):
        pass


class Verifier:
    def verify(self, response: str, problem: Problem) -> Verdict:
        ok = response.startswith("right")
        return Verdict(score=float(ok), correct=ok)


class Critic:
    def __init__(self, log: list, asynchronous: bool):
        self.log = log
        if asynchronous:
            self.critique_async = self._async

    def critique(self, requests):
        self.log.append(("critique", [r.problem.id for r in requests]))
        return [Critique(text=f"fix {r.response}", critic="fake") for r in requests]

    def _async(self, requests):
        future = Future()
        future.set_result(self.critique(requests))
        return future


class Prompts:
    def refinement_ids(self, problem, response, critique):
        # problem p's refinement prompts are 3 + p tokens long
        return [99, int(problem.id), len(response)] + [0] * int(problem.id)


def run(streaming: bool, log: list):
    problems = [Problem(id=str(p), question=f"q{p}", answer="right") for p in range(5)]
    settings = RolloutSettings(
        samples_per_prompt=G,
        refinements_per_prompt=1,
        refine="failed_groups",
        max_refinements_generated=None,
        fallback="first",
        sampling=SamplingParams(n=G, max_new_tokens=4),
    )

    def submit(pairs, batch):
        log.append(("verify", len(pairs), batch))
        future = Future()
        future.set_result([Verifier().verify(text, problem) for text, problem in pairs])
        return future

    return rollout(
        problems,
        [[p, 7, 8] for p in range(5)],
        policy=Policy(log, streaming),
        verifier=Verifier(),
        critic=Critic(log, streaming),
        prompts=Prompts(),
        settings=settings,
        eos_ids=[2],
        rng_key="k",
        verify_submit=submit,
    )


def test_critiques_of_a_verified_group_go_out_while_the_rest_is_sampled():
    log: list = []
    run(True, log)
    # prompts 1 and 3 fail every sample; prompt 1 comes with the first call, 3 the second
    assert log[:4] == [
        ("generate", 0),
        ("verify", 2 * G, 5 * G),
        ("critique", ["1"] * G),
        ("generate", 2),
    ]
    assert ("critique", ["3"] * G) in log and log.index(("critique", ["3"] * G)) < log.index(
        ("generate", 4)
    )


def test_the_overlap_does_not_change_the_result():
    a, b = run(True, []), run(False, [])
    assert [
        (r.group, r.kind, r.completion.text, r.verdict, r.kept, r.row, r.parent) for r in a.records
    ] == [
        (r.group, r.kind, r.completion.text, r.verdict, r.kept, r.row, r.parent) for r in b.records
    ]
    assert [c.text for c in a.critiques] == [c.text for c in b.critiques]
    assert [(r.group, r.response_ids, r.is_refinement) for r in a.rows] == [
        (r.group, r.response_ids, r.is_refinement) for r in b.rows
    ]
    assert a.groups_all_failed == 2 and a.groups_rescued == 2


@pytest.mark.parametrize("streaming", [True, False])
def test_stage_times_cover_every_stage_that_ran(streaming):
    out = run(streaming, [])
    assert set(out.seconds) == {"sample", "verify", "critique", "refine"}
    assert all(v >= 0 for v in out.seconds.values())


def test_prompt_lengths_are_recorded_per_sequence_and_averaged():
    """Each record keeps the length of the prompt it was sampled from: the problem's prompt
    (3 tokens here) for initial samples, its refinement prompt for a refinement."""
    ro = run(True, [])
    initial = [r for r in ro.records if r.kind == "initial"]
    refinements = [r for r in ro.records if r.kind == "refinement"]
    assert {r.prompt_tokens for r in initial} == {3}
    # prompts 1 and 3 fail every sample: G refinements each, prompts of 3 + 1 and 3 + 3
    assert sorted(r.prompt_tokens for r in refinements) == [4] * G + [6] * G
    metrics = rollout_metrics(ro)
    assert metrics["length/prompt_mean"] == 3.0
    assert metrics["length/refinement_prompt_mean"] == 5.0
