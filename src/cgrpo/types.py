"""Plain data passed between the stages of a step.

Shape legend used across cgrpo: P prompts per step, G initial samples per prompt, K
refinements kept per prompt, N = G + K group size, T response tokens, L full sequence length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Problem:
    """One training or evaluation item from a task: a question with a reference answer."""

    id: str
    question: str
    answer: str
    solution: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """What a verifier says of one response.

    ``score`` is the reward (1.0 / 0.0 for the built-in verifiers); ``extracted`` is the
    answer the verifier found, for logs; ``reason`` says why a response scored 0 when that
    is not simply "wrong" (``no_answer``, ``timeout``, ``not_a_number``, ``error: ...``).
    A verifier that raised gives :meth:`from_exception`'s verdict: reason ``error: Type:
    message (file:line)`` and the formatted traceback in ``trace``.
    """

    score: float
    correct: bool
    extracted: str | None = None
    reason: str = ""
    trace: str | None = field(default=None, compare=False, repr=False)

    @property
    def raised(self) -> bool:
        """Whether the verifier raised instead of judging (the response's reward is 0)."""
        return self.reason == "error" or self.reason.startswith("error:")

    @classmethod
    def from_exception(cls, exc: BaseException, extracted: str | None = None) -> Verdict:
        """Reward 0 for a verifier that raised ``exc``, naming where (the innermost frame:
        a reward function's own line) and keeping the traceback."""
        import traceback

        frames = traceback.extract_tb(exc.__traceback__)
        where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(0.0, False, extracted, f"error: {type(exc).__name__}: {exc}{where}", trace)


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``top_k`` 0 and ``top_p`` 1.0 mean "off"."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    greedy: bool = False


@dataclass
class Completion:
    """One sampled response: token ids (cut after the first EOS, which is kept), the
    sampler's log-probability of each of those tokens, and the decoded text.

    ``logprobs`` is a sequence of floats or a 1-D float tensor (the hf backend hands over
    rows of its batch tensor: no per-token Python floats between sampling and the update,
    where ``collate`` copies them into the (B, T) old log-probs).

    ``weight_version`` is the version of the weights that sampled it (the number of weight
    syncs the sampler had received), where the backend knows it; None otherwise."""

    token_ids: list[int]
    logprobs: Sequence[float] | torch.Tensor | None
    text: str
    finish_reason: Literal["stop", "length"]
    weight_version: int | None = None


@dataclass(frozen=True)
class CritiqueRequest:
    """What a critic is shown: the problem (with its reference answer), one response and
    the verifier's verdict on it."""

    problem: Problem
    response: str
    verdict: Verdict


@dataclass
class Critique:
    """A critic's answer. ``fallback`` is set when the text is the rule-based fallback
    critique written because the configured critic failed (``error`` says why)."""

    text: str
    critic: str
    fallback: bool = False
    error: str | None = None
    critic_verdict: bool | None = None
    cached: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    latency_s: float = 0.0


# Critique.error of a fallback used because a critic's budget is spent (not a failure)
BUDGET_EXHAUSTED = "budget exhausted"
