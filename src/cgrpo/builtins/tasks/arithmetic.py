"""``arithmetic``: a synthetic task with known answers, for the CPU quickstart and tests.

Problems such as "What is 37 + 48?" with answer "85" and a worked solution
"37 + 48 = 85. The answer is \\boxed{85}." (used by the supervised warm-up).
"""

from __future__ import annotations

import random
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cgrpo.types import Problem


class ArithmeticTask:
    """Synthetic integer arithmetic (a + b, a - b, a * b) with worked solutions."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        size: int = Field(2000, ge=1, description="number of problems")
        digits: int = Field(2, ge=1, le=6, description="digits per operand")
        ops: list[str] = Field(["+"], description="operators among '+', '-', '*'")
        seed: int = Field(
            1234, description="generator seed (fixed: the data is the same across runs)"
        )
        carry: Literal["any", "with", "without"] = Field(
            "any",
            description="for '+': keep only sums whose ones digits carry ('with') or do not "
            "('without'); builds persistent-failure experiments",
        )

        @field_validator("ops")
        @classmethod
        def _ops(cls, v: list[str]) -> list[str]:
            bad = [op for op in v if op not in "+-*" or len(op) != 1]
            if not v or bad:
                raise ValueError(f"ops must be a non-empty list of '+', '-', '*' (bad: {bad})")
            return v

    def __init__(self, options: Options | None = None, context: Any = None):
        self.options = options or self.Options()

    def load(self) -> list[Problem]:
        o = self.options
        rng = random.Random(o.seed)
        lo, hi = 10 ** (o.digits - 1) if o.digits > 1 else 0, 10**o.digits - 1
        out: list[Problem] = []
        attempts = 0
        while len(out) < o.size:
            attempts += 1
            if attempts > 1000 * o.size:
                raise ValueError(f"cannot draw {o.size} problems with carry={o.carry!r}")
            a, b, op = rng.randint(lo, hi), rng.randint(lo, hi), rng.choice(o.ops)
            if o.carry != "any" and op == "+" and ((a % 10 + b % 10 >= 10) != (o.carry == "with")):
                continue
            i = len(out)
            value = a + b if op == "+" else a - b if op == "-" else a * b
            out.append(
                Problem(
                    id=f"arith-{i}",
                    question=f"What is {a} {op} {b}?",
                    answer=str(value),
                    solution=f"{a} {op} {b} = {value}. The answer is \\boxed{{{value}}}.",
                    # the question is an expression equal to the answer: the math verifier
                    # must not reward echoing it (math.py, answer_form)
                    metadata={"answer_form": "number"},
                )
            )
        return out
