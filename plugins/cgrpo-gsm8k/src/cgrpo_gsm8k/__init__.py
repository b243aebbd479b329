"""cgrpo plugin: the ``gsm8k`` numeric verifier and the ``gsm8k`` benchmark (a preset of
cgrpo's row benchmark: the public dataset's names and fields, scored by this verifier)."""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cgrpo import hookimpl
from cgrpo.types import Problem, Verdict

_NUMBER = re.compile(r"-?\$?\s?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def to_number(text: str) -> float | None:
    """The last number in ``text`` ('1,234', '$5', '-0.5'), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    cleaned = found[-1].replace(",", "").replace("$", "").replace(" ", "")
    try:
        return float(cleaned)
    except ValueError:
        return None


def final_answer(text: str) -> str:
    """The part of ``text`` holding the final answer: last \\boxed{}, else after ####."""
    boxed = _BOXED.findall(text)
    if boxed:
        return boxed[-1]
    if "####" in text:
        return text.rsplit("####", 1)[1]
    return text


class GSM8KVerifier:
    """Final number (\\boxed{}, '#### n' or last number) vs. a numeric reference."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        rel_tol: float = Field(1e-6, ge=0, description="relative tolerance of the comparison")

    def __init__(self, options: Options, context: Any = None):
        self.options = options

    def verify(self, response: str, problem: Problem) -> Verdict:
        gold = to_number(final_answer(problem.answer))
        if gold is None:
            raise ValueError(f"problem {problem.id}: reference {problem.answer!r} has no number")
        pred = to_number(final_answer(response))
        if pred is None:
            return Verdict(0.0, False, None, "no_answer")
        ok = math.isclose(pred, gold, rel_tol=self.options.rel_tol, abs_tol=1e-9)
        return Verdict(float(ok), ok, f"{pred:g}")


@hookimpl
def register_verifiers(register):
    register("gsm8k", GSM8KVerifier)


def gsm8k_benchmark(options: Any, context: Any = None):
    """GSM8K test set (openai/gsm8k, main): 1,319 grade-school problems, greedy."""
    from cgrpo.builtins.benchmarks.benchmark import RowBenchmark

    return RowBenchmark(options, context, name="gsm8k")


@hookimpl
def register_benchmarks(register):
    from cgrpo.builtins.benchmarks.benchmark import preset_options

    options = preset_options(
        "gsm8k",
        dataset="openai/gsm8k",
        subset="main",
        split="test",
        question_field="question",
        answer_field="answer",  # a worked solution ending in '#### 42': the verifier reads it
        verifier={"name": "gsm8k", "options": {}},
    )
    register("gsm8k", gsm8k_benchmark, options=options)
