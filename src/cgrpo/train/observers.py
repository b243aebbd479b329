"""The run's observers: the recipe's ``observers:`` list (TensorBoard, W&B, ... from
plugins) and the plugins' global ``on_step_end`` hook, fed from one place.

A tracker that fails in the middle of a run (a network hiccup, a full disk) must not end
a training job of days: its error is logged as a warning (console and train.log) and the
run goes on; after three failures in a row it is switched off, with a warning saying so.
Failures when it starts are errors: a misconfigured tracker is caught before step 1.
"""

from __future__ import annotations

import logging
from typing import Any

from cgrpo.errors import TrainingError

log = logging.getLogger(__name__)

MAX_FAILURES = 3


class Observers:
    """Built observers (main process only) plus the pluggy hook relay."""

    def __init__(self, hooks: Any, observers: list[tuple[str, Any]]):
        self.hooks = hooks
        self.observers = observers  # (recipe name, built observer)
        self.failures = {name: 0 for name, _ in observers}

    def start(self, run_dir: str, recipe: dict[str, Any], resumed_step: int) -> None:
        for name, observer in self.observers:
            try:
                observer.start(run_dir=run_dir, recipe=recipe, resumed_step=resumed_step)
            except Exception as exc:  # misconfigured: stop before step 1, clearly
                raise TrainingError(
                    f"observer {name!r} could not start: {type(exc).__name__}: {exc}. Fix its "
                    "options under observers:, or remove it"
                ) from exc

    def step(
        self,
        step: int,
        metrics: dict[str, float],
        samples: list[dict[str, Any]],
        training: bool = True,
    ) -> None:
        """``training=False``: the evaluation before step 1 (step 0), for observers only."""
        if self.hooks is not None and training:
            self.hooks.on_step_end(step=step, metrics=metrics)
        for name, observer in list(self.observers):
            try:
                observer.step(step=step, metrics=metrics, samples=samples)
                self.failures[name] = 0
            except Exception as exc:  # a tracker never ends a run in its middle
                self.failures[name] += 1
                log.warning("observer %s failed at step %d: %s", name, step, exc)
                if self.failures[name] >= MAX_FAILURES:
                    log.warning("observer %s failed %d times in a row: switched off for the "
                                "rest of the run", name, MAX_FAILURES)  # fmt: skip
                    self.observers.remove((name, observer))

    def end(self, status: str) -> None:
        for name, observer in self.observers:
            try:
                observer.end(status=status)
            except Exception as exc:
                log.warning("observer %s failed to finish: %s", name, exc)


def build_observers(recipe: Any, registries: Any, context: Any) -> list[tuple[str, Any]]:
    """The recipe's observers, built in order."""
    return [
        (spec.name, registries["observer"].build(spec.name, spec.options, context))
        for spec in recipe.observers
    ]
