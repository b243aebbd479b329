"""``arithmetic-test``: the synthetic arithmetic task drawn with its own seed, so that the
CPU quickstart has a benchmark to evaluate on without any file.

With one-digit operands there are only 100 sums, so the test problems repeat training
problems; with two or more digits a different seed gives mostly unseen ones.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from cgrpo.builtins.tasks.arithmetic import ArithmeticTask
from cgrpo.types import Problem


class ArithmeticBenchmark:
    """Synthetic arithmetic (the quickstart's task) with a test seed, greedy by default."""

    class Options(ArithmeticTask.Options):
        size: int = Field(100, ge=1, description="number of problems")
        digits: int = Field(1, ge=1, le=6, description="digits per operand")
        seed: int = Field(4321, description="generator seed (the training task's is 1234)")
        k: int = Field(1, ge=1, description="samples per problem (k > 1: avg@k, pass@k, maj@k)")
        temperature: float = Field(0.6, gt=0, description="temperature of the k samples")
        top_p: float = Field(0.95, gt=0, le=1, description="top-p of the k samples")
        label: str = Field(
            "arithmetic-test",
            pattern=r"^[A-Za-z0-9._-]+$",
            description="its name in metrics (eval/<label>/...): several draws side by side",
        )

        def ignored_settings(self) -> dict[str, str]:
            if self.k == 1:
                why = "applies to the k samples (k: 1 = greedy only); set k"
                return {"temperature": why, "top_p": why}
            return {}

    def __init__(self, options: Options | None = None, context: Any = None):
        self.options = options or self.Options()
        o = self.options
        self.name = o.label
        self.category = "math"
        self.verifier = ("math", {})
        self.k, self.temperature, self.top_p = o.k, o.temperature, o.top_p

    def load(self) -> list[Problem]:
        fields = ArithmeticTask.Options.model_fields
        task = ArithmeticTask.Options(**{k: getattr(self.options, k) for k in fields})
        return [
            Problem(p.id, p.question, p.answer, p.solution, {**p.metadata, "benchmark": self.name})
            for p in ArithmeticTask(task).load()
        ]

    def describe(self) -> dict[str, Any]:
        fields = ArithmeticTask.Options.model_fields
        return {"generator": "arithmetic", **{k: getattr(self.options, k) for k in fields}}
