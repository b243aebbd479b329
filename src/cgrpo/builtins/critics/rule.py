"""Rule-based critics: they restate the verifier's verdict, optionally with the answer.

Texts follow ALGORITHM.md: *indicative* says only correct / incorrect; *ground_truth*
(the released code's default) adds the reference answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cgrpo.types import Critique, CritiqueRequest

CORRECT = "The generated solution is correct."
INCORRECT = "The generated solution is incorrect."


def indicative_text(correct: bool) -> str:
    """The indicative critique of a verdict."""
    return CORRECT if correct else INCORRECT


def ground_truth_text(correct: bool, answer: str) -> str:
    """The indicative critique plus the reference answer. Also the fallback critique used
    when any other critic fails."""
    return f"{indicative_text(correct)[:-1]}, the ground truth is {answer}."


class IndicativeCritic:
    """Says whether the response is correct, nothing more."""

    name = "indicative"

    def __init__(self, options: Any = None, context: Any = None):
        self.options = options

    def critique(self, requests: Sequence[CritiqueRequest]) -> list[Critique]:
        return [
            Critique(
                indicative_text(r.verdict.correct), self.name, critic_verdict=r.verdict.correct
            )
            for r in requests
        ]


class GroundTruthCritic:
    """Says whether the response is correct and gives the reference answer."""

    name = "ground_truth"

    def __init__(self, options: Any = None, context: Any = None):
        self.options = options

    def critique(self, requests: Sequence[CritiqueRequest]) -> list[Critique]:
        return [
            Critique(
                ground_truth_text(r.verdict.correct, r.problem.answer),
                self.name,
                critic_verdict=r.verdict.correct,
            )
            for r in requests
        ]
