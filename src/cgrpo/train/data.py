"""The ordered, resumable stream of problems a run trains on.

Order is a pure function of (seed, epoch): each epoch is a seeded permutation of the
problem list, so a position ``(epoch, index)`` saved in a checkpoint restores exactly the
problems that come next, neither repeating nor skipping any.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from cgrpo.types import Problem

# what a run refuses about its data before training (``cgrpo check`` says the same words)
NO_SOLUTIONS = (
    "sft.steps > 0 but no problem of the warm-up's data (sft.task, else data.task) has a "
    "reference solution; map a solution field in its options (solution_field) or set "
    "sft.steps: 0"
)
NO_REFINEMENT_SOLUTIONS = (
    "sft.refinement_task has no problem with a reference solution; map its solution_field"
)
NO_DEMONSTRATION_SOLUTIONS = (
    "algorithm.demonstrations.per_group > 0 but no training problem (data.task) has a "
    "reference solution to add to its group; map one (data.task.options.solution_field) or "
    "set algorithm.demonstrations.per_group: 0"
)


def holdout_takes_all(size: int, problems: int) -> str | None:
    """Why holding ``size`` problems out of ``problems`` for evaluation cannot work, or
    None when it can."""
    if problems > size:
        return None
    return (
        f"eval.size={size} would hold out all {problems} problems; lower eval.size or give "
        "eval.task"
    )


@dataclass
class DataStream:
    """Draws batches of problems epoch after epoch."""

    problems: Sequence[Problem]
    seed: int = 0
    shuffle: bool = True
    epoch: int = 0
    index: int = 0

    def __post_init__(self) -> None:
        if not self.problems:
            raise ValueError("a data stream needs at least one problem")
        self._order = self._permutation(self.epoch)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.problems)))
        if self.shuffle:
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def next_batch(self, size: int) -> list[Problem]:
        """The next ``size`` problems, crossing into the next epoch when one ends."""
        out = []
        while len(out) < size:
            if self.index >= len(self._order):
                self.epoch += 1
                self.index = 0
                self._order = self._permutation(self.epoch)
            out.append(self.problems[self._order[self.index]])
            self.index += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "size": len(self.problems)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("size", len(self.problems)) != len(self.problems):
            raise ValueError(
                f"the data has {len(self.problems)} problems but the checkpoint was taken "
                f"with {state['size']}: resuming would repeat or skip data"
            )
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._permutation(self.epoch)
