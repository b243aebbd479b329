"""Which responses of a group get a critique and a refinement (ALGORITHM.md section 2, step
4), and which of them are known to before the whole group is verified.

``algorithm.refine``: ``all`` refines every response (released code), ``failed_groups``
every response of a group whose responses all failed (paper), ``failed_responses`` every
failed response; ``max_refinements_generated`` (``cap``) keeps the first ``cap`` of them in
response order. The asynchronous rollout verifies a group's responses as they finish, in
any order; :func:`sure_target` says when a response's refinement can start at once because
no verdict still missing could change the decision, :func:`possible_target` when it still
could become one (what ``rollout.speculative_refinement`` starts early).
"""

from __future__ import annotations

from collections.abc import Sequence

MODES = ("all", "failed_groups", "failed_responses")


def group_targets(correct: Sequence[bool], mode: str, cap: int | None) -> list[int]:
    """Response indices of one complete group to critique and refine, in response order."""
    if mode == "all":
        chosen = list(range(len(correct)))
    elif mode == "failed_groups":
        chosen = [] if any(correct) else list(range(len(correct)))
    elif mode == "failed_responses":
        chosen = [i for i, ok in enumerate(correct) if not ok]
    else:
        raise ValueError(f"unknown refine mode {mode!r}; expected one of {MODES}")
    return chosen[:cap]


def sure_target(known: Sequence[bool | None], i: int, mode: str, cap: int | None) -> bool:
    """Whether response ``i`` (verified: ``known[i]`` is not None) is a target whatever the
    verdicts still missing (None) turn out to be.

    ``all``: its index is under the cap. ``failed_responses``: it failed and, with a cap,
    every earlier response is verified and fewer than ``cap`` of them failed.
    ``failed_groups``: never before the group is complete (one correct response anywhere
    cancels the whole group's refinements).
    """
    if known[i] is None:
        raise ValueError(f"response {i} is not verified yet")
    if mode == "all":
        return cap is None or i < cap
    if mode == "failed_responses":
        if known[i]:
            return False
        if cap is None:
            return True
        earlier = known[:i]
        return None not in earlier and sum(ok is False for ok in earlier) < cap
    if mode == "failed_groups":
        return False
    raise ValueError(f"unknown refine mode {mode!r}; expected one of {MODES}")


def possible_target(known: Sequence[bool | None], i: int, mode: str, cap: int | None) -> bool:
    """Whether response ``i`` (verified) can still be a target: for ``failed_groups``, it
    failed, no verified response of the group is correct, and its index is under the cap."""
    if mode != "failed_groups":
        return sure_target(known, i, mode, cap)
    return known[i] is False and True not in known and (cap is None or i < cap)
