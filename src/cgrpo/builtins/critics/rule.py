"""Rule-based critics: they restate the verifier's verdict, optionally with the answer.

Texts follow ALGORITHM.md: *indicative* says only correct / incorrect; *ground_truth*
(the released code's default) adds the reference answer. ``options.template`` replaces the
sentence (fields ``{verdict}``, ``{answer}``, ``{question}``, ``{extracted}``; the words of
``{verdict}`` are options too), versioned by its hash in train.log.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cgrpo.types import Critique, CritiqueRequest

log = logging.getLogger(__name__)

CORRECT = "The generated solution is correct."
INCORRECT = "The generated solution is incorrect."


def indicative_text(correct: bool) -> str:
    """The indicative critique of a verdict."""
    return CORRECT if correct else INCORRECT


def ground_truth_text(correct: bool, answer: str) -> str:
    """The indicative critique plus the reference answer. Also the fallback critique used
    when any other critic fails."""
    return f"{indicative_text(correct)[:-1]}, the ground truth is {answer}."


FIELDS = ("verdict", "answer", "question", "extracted")


def check_rule_template(text: str) -> str:
    """``text`` if it fills with the rule critics' fields, else ValueError naming them."""
    try:
        text.format(**{f: "x" for f in FIELDS})
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"template cannot be filled ({exc!r}); use only "
            + ", ".join("{" + f + "}" for f in FIELDS)
        ) from None
    return text


class RuleOptions(BaseModel):
    """The text of a rule critic: a template (versioned by its hash) and the words that
    fill ``{verdict}`` (short words keep tiny vocabularies usable)."""

    model_config = ConfigDict(extra="forbid")
    template: str | None = Field(
        None,
        description="critique text with {verdict}, {answer}, {question}, {extracted}; "
        "None = the paper's sentence",
    )
    correct: str = Field("correct", description="the word {verdict} becomes when correct")
    incorrect: str = Field("incorrect", description="the word {verdict} becomes when wrong")

    @field_validator("template")
    @classmethod
    def _fills(cls, v: str | None) -> str | None:
        return None if v is None else check_rule_template(v)

    def ignored_settings(self) -> dict[str, str]:
        if self.template is not None and "{verdict}" not in self.template:
            why = "is the text of {verdict}, which the template does not use; add it or remove this"
            return {"correct": why, "incorrect": why}
        return {}


class _RuleCritic:
    name = ""
    DEFAULT = ""
    Options = RuleOptions

    def __init__(self, options: RuleOptions | None = None, context: Any = None):
        self.options = options or RuleOptions()
        self.template = self.options.template or self.DEFAULT
        words = f"{self.template}\n{self.options.correct}\n{self.options.incorrect}"
        self.version = f"{self.name}-{hashlib.sha256(words.encode()).hexdigest()[:12]}"
        log.info("critic %s: template version %s: %r", self.name, self.version, self.template)

    def text(self, request: CritiqueRequest) -> str:
        o = self.options
        return self.template.format(
            verdict=o.correct if request.verdict.correct else o.incorrect,
            answer=request.problem.answer,
            question=request.problem.question,
            extracted=request.verdict.extracted or "",
        )

    def critique(self, requests: Sequence[CritiqueRequest]) -> list[Critique]:
        return [
            Critique(self.text(r), self.name, critic_verdict=r.verdict.correct) for r in requests
        ]


class IndicativeCritic(_RuleCritic):
    """Says whether the response is correct, nothing more (text: options.template)."""

    name = "indicative"
    DEFAULT = "The generated solution is {verdict}."


class GroundTruthCritic(_RuleCritic):
    """Says whether the response is correct and gives the reference answer."""

    name = "ground_truth"
    DEFAULT = "The generated solution is {verdict}, the ground truth is {answer}."
