"""One per-group rollout case shared by the sampler tests (the in-process engine and the
servers): six groups with a rule verifier and a rule critic, run with and without
speculative refinement, and checked against the seeded ``generate``."""

from __future__ import annotations

from cgrpo.types import Critique, Problem, SamplingParams, Verdict


class Verifier:
    """Groups 0-1 pass, 2 half-passes (by response length parity), 3-5 fail."""

    def verify(self, response, problem):
        ok = problem.id in "01" or (problem.id == "2" and len(response) % 2 == 0)
        return Verdict(float(ok), ok)


class Rule:
    def critique(self, requests):
        return [Critique("try again", "rule") for _ in requests]


def check_rollout_with_and_without_speculation(backend, tok, eos_ids):
    """The rollout on ``backend``: initial samples are the seeded generate's, and
    speculative refinement changes when work starts, never what is kept. Returns the
    plain run's rollout for backend-specific checks."""
    from cgrpo.train.rollout import RolloutSettings, rollout
    from cgrpo.train.rollout_context import mix_seed

    class Prompts:
        def refinement_ids(self, problem, response, critique):
            return tok.encode(f"{problem.question} {critique}")

    problems = [Problem(str(i), f"What is {i} + {i}?", str(2 * i)) for i in range(6)]
    ids = [tok.encode(p.question) for p in problems]
    sampling = SamplingParams(n=4, max_new_tokens=10)

    def run(speculative):
        settings = RolloutSettings(4, 1, "failed_groups", 2, "first", sampling, speculative)
        return rollout(problems, ids, policy=backend, verifier=Verifier(), critic=Rule(),
                       prompts=Prompts(), settings=settings, eos_ids=eos_ids,
                       rng_key="k", seed=7)  # fmt: skip

    plain, spec = run(False), run(True)
    key = [(r.kind, r.group, r.completion.token_ids, r.kept, r.row) for r in plain.records]
    assert key == [(r.kind, r.group, r.completion.token_ids, r.kept, r.row) for r in spec.records]
    seeded = backend.generate(ids, sampling, seeds=[mix_seed(7, 0, p) for p in range(6)])
    initial = [r.completion.token_ids for r in plain.records if r.kind == "initial"]
    assert initial == [c.token_ids for g in seeded for c in g]
    assert plain.groups_all_failed >= 3 and spec.speculative["started"] >= 3
    return plain
