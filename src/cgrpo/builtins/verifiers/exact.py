"""``exact``: normalized string match, for answers that are names, words or codes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cgrpo.builtins.verifiers.extract import last_boxed, normalize_text
from cgrpo.types import Problem, Verdict


class ExactVerifier:
    """Normalized string match of the final answer (boxed if present) with the reference."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        case_sensitive: bool = Field(False, description="compare letter case too")
        use_boxed: bool = Field(
            True, description="compare the last \\boxed{} content when there is one"
        )
        strip_chars: str = Field(
            ".$ ", description="characters stripped from both ends before comparing"
        )

    def __init__(self, options: Options | None = None, context: Any = None):
        self.options = options or self.Options()

    def _norm(self, text: str) -> str:
        text = normalize_text(text).strip(self.options.strip_chars)
        return text if self.options.case_sensitive else text.casefold()

    def verify(self, response: str, problem: Problem) -> Verdict:
        boxed = last_boxed(response) if self.options.use_boxed else None
        candidate = boxed if boxed is not None else response
        if not candidate.strip():
            return Verdict(0.0, False, None, "no_answer")
        ok = self._norm(candidate) == self._norm(problem.answer)
        return Verdict(float(ok), ok, candidate.strip())
