"""Expert demonstrations in the group (LUFFY; ``algorithm.demonstrations``).

A problem's reference solution joins its group as an off-policy member: the row is
``[original prompt ; solution tokens ; EOS]``, trained like a refinement (shaped with
f(p) = p/(p+gamma), no old log-prob, never clipped: ``TrainRow.is_refinement`` and
``is_demonstration``), and its reward is the verifier's verdict on the solution text, as for
any member. A solution longer than ``sampling.max_new_tokens`` is cut there, without an EOS
(as a sampled response cut at the length limit is).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cgrpo.types import Completion, Problem, Verdict


def wanted(per_group: int, when: str, problem: Problem, verdicts: Sequence[Verdict]) -> int:
    """How many copies of ``problem``'s reference solution join its group: ``per_group``
    when it has a solution and, with ``when="failed_groups"``, only if every initial
    response failed; else 0."""
    if per_group < 1 or not problem.solution:
        return 0
    if when == "failed_groups" and any(v.correct for v in verdicts):
        return 0
    if when not in ("always", "failed_groups"):
        raise ValueError(f"demonstrations.when must be 'always' or 'failed_groups', got {when!r}")
    return per_group


def completion_of(tokenizer: Any, solution: str, max_new_tokens: int) -> Completion:
    """The reference solution as a member of the group: its tokens and the tokenizer's EOS,
    cut to ``max_new_tokens`` (then without EOS, ``finish_reason="length"``). No sampler
    log-probs: it was not sampled."""
    ids = tokenizer.encode(solution, add_special_tokens=False)
    eos = tokenizer.eos_token_id
    if len(ids) + 1 <= max_new_tokens and eos is not None:
        return Completion([*ids, eos], None, solution, "stop")
    ids = ids[:max_new_tokens]
    return Completion(ids, None, tokenizer.decode(ids), "length")
