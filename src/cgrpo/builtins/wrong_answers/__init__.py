"""Built-in makers of the wrong previous response of an SFT refinement example
(``sft.wrong_answer``), registered as the ``builtins.wrong_answers`` plugin.

A refinement example shows the refinement prompt (question, a wrong previous response, the
critic's critique of it) with the correct solution as target. What the wrong response looks
like decides what the warm-up teaches: ``other_solution`` (another problem's solution) is
cheap and obviously wrong; ``perturbed_answer`` (the problem's own solution, final answer
moved) teaches reading the critique rather than recomputing; ``own_sample`` shows the
warm-up model's own mistakes, the kind RL will critique.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from cgrpo.errors import DataError
from cgrpo.hookspecs import hookimpl
from cgrpo.types import Problem, Verdict


class _NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Maker:
    """What the built-ins share: no options, no sample of the model."""

    Options = _NoOptions
    uses_own_sample = False

    def __init__(self, options: BaseModel | None = None, context: object = None):
        pass


class OtherSolution(_Maker):
    """Another problem's solution, with a different answer where the pool has one."""

    def make(
        self,
        problem: Problem,
        pool: Sequence[Problem],
        rng: random.Random,
        sample: tuple[str, Verdict] | None = None,
    ) -> tuple[str, Verdict]:
        other = rng.choice(pool)
        while other.answer == problem.answer and len(pool) > 1:
            other = rng.choice(pool)
        return other.solution or "", Verdict(0.0, False, other.answer)


class PerturbedAnswer(_Maker):
    """The problem's own solution with its final answer changed: an integer moved by 1-10,
    anything else replaced by another problem's different answer."""

    def make(
        self,
        problem: Problem,
        pool: Sequence[Problem],
        rng: random.Random,
        sample: tuple[str, Verdict] | None = None,
    ) -> tuple[str, Verdict]:
        bad = perturbed(problem.answer, rng, pool)
        previous = with_final_answer(problem.solution or "", problem.answer, bad)
        return previous, Verdict(0.0, False, bad)


class OwnSample(PerturbedAnswer):
    """The warm-up model's own sampled response when the verifier finds it wrong (one
    seeded generate call per warm-up step, the recipe's sampling settings); where the model
    was right, a perturbed answer instead."""

    uses_own_sample = True

    def make(
        self,
        problem: Problem,
        pool: Sequence[Problem],
        rng: random.Random,
        sample: tuple[str, Verdict] | None = None,
    ) -> tuple[str, Verdict]:
        if sample is not None and not sample[1].correct:
            return sample
        return super().make(problem, pool, rng)


def perturbed(answer: str, rng: random.Random, pool: Sequence[Problem]) -> str:
    """A wrong answer near ``answer``: an integer moved by 1 to 10 either way; anything else
    replaced by another problem's different answer."""
    text = answer.strip()
    if re.fullmatch(r"-?\d+", text):
        return str(int(text) + rng.choice([-1, 1]) * rng.randint(1, 10))
    others = [p.answer for p in pool if p.answer.strip() != text]
    if not others:
        raise DataError(
            f"sft.wrong_answer perturbed_answer: {answer!r} is not an integer and no other "
            "problem has a different answer to put in its place"
        )
    return rng.choice(others)


def with_final_answer(solution: str, answer: str, wrong: str) -> str:
    """``solution`` with its final answer ``answer`` replaced by ``wrong``: in its last
    ``\\boxed{...}`` when it has one, else the last occurrence of the answer; without
    either, the wrong answer is stated at the end."""
    boxed = f"\\boxed{{{answer.strip()}}}"
    at = solution.rfind(boxed)
    if at >= 0:
        return solution[:at] + f"\\boxed{{{wrong}}}" + solution[at + len(boxed) :]
    at = solution.rfind(answer.strip())
    if answer.strip() and at >= 0:
        return solution[:at] + wrong + solution[at + len(answer.strip()) :]
    return f"{solution.rstrip()} The answer is \\boxed{{{wrong}}}."


@hookimpl
def register_wrong_answers(register):
    register("other_solution", OtherSolution)
    register("perturbed_answer", PerturbedAnswer)
    register("own_sample", OwnSample)
