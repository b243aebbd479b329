"""``choice``: multiple-choice letter answers (GPQA, MMLU-Pro style)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cgrpo.builtins.verifiers.extract import last_boxed, normalize_text
from cgrpo.types import Problem, Verdict


class ChoiceVerifier:
    """Multiple-choice letter: \\boxed{C}, 'answer is (C)', 'Answer: C', '(C)', or a bare letter."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        letters: str = Field(
            "ABCDEFGHIJ", description="valid option letters (MMLU-Pro has 10, GPQA 4)"
        )

        @field_validator("letters")
        @classmethod
        def _letters(cls, v: str) -> str:
            if not v or not v.isalpha() or not v.isupper() or len(set(v)) != len(v):
                raise ValueError("letters must be distinct upper-case letters, e.g. 'ABCD'")
            return v

    def __init__(self, options: Options | None = None, context: Any = None):
        self.options = options or self.Options()
        L = re.escape(self.options.letters)
        self._patterns = [
            re.compile(rf"answer\s*(?:is|:)?\s*:?\s*\(?\s*([{L}])\s*\)?(?![A-Za-z])", re.I),
            re.compile(rf"\(([{L}])\)"),
        ]

    def extract(self, response: str) -> str | None:
        """The chosen letter, or None. Later mentions win over earlier ones."""
        text = normalize_text(response)
        boxed = last_boxed(text)
        if boxed is not None:
            letter = self._letter(boxed)
            if letter:
                return letter
        for pattern in self._patterns:
            found = pattern.findall(text)
            if found:
                return found[-1].upper()
        return self._letter(text)  # the whole response is just a letter

    def _letter(self, text: str) -> str | None:
        stripped = re.sub(r"\\text\{([^}]*)\}", r"\1", text).strip(" ()$.")
        stripped = stripped.upper()
        return stripped if len(stripped) == 1 and stripped in self.options.letters else None

    def verify(self, response: str, problem: Problem) -> Verdict:
        gold = self._letter(normalize_text(problem.answer))
        if gold is None:
            raise ValueError(
                f"problem {problem.id}: reference answer {problem.answer!r} is not one of the "
                f"letters {self.options.letters!r}; set verifier.options.letters or fix the data"
            )
        letter = self.extract(response)
        if letter is None:
            return Verdict(0.0, False, None, "no_answer")
        ok = letter == gold
        return Verdict(float(ok), ok, letter)
