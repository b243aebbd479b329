"""The observer relay: a tracker failing mid-run is logged and, after three failures in a
row, switched off; the run goes on. Failing at start is an error naming the observer."""

import logging

import pytest

from cgrpo.errors import TrainingError
from cgrpo.train.observers import Observers


class Flaky:
    def __init__(self, fail_steps=(), fail_start=False):
        self.fail_steps, self.fail_start, self.seen, self.ended = (
            set(fail_steps),
            fail_start,
            [],
            None,
        )

    def start(self, run_dir, recipe, resumed_step):
        if self.fail_start:
            raise ConnectionError("no network")

    def step(self, step, metrics, samples):
        if step in self.fail_steps:
            raise OSError("disk full")
        self.seen.append(step)

    def end(self, status):
        self.ended = status


def test_a_failing_tracker_is_logged_and_switched_off_after_three_in_a_row(caplog):
    once, broken = Flaky(fail_steps={2}), Flaky(fail_steps={1, 2, 3, 4, 5})
    obs = Observers(None, [("once", once), ("broken", broken)])
    obs.start("run", {}, 0)
    with caplog.at_level(logging.WARNING):
        for step in range(1, 6):
            obs.step(step, {"loss/total": 1.0}, [])
    obs.end("completed")
    assert once.seen == [1, 3, 4, 5] and once.ended == "completed"
    assert broken.ended is None  # switched off after step 3
    messages = [r.getMessage() for r in caplog.records]
    assert sum("observer broken failed at step" in m for m in messages) == 3
    assert any("switched off" in m for m in messages)


def test_a_tracker_that_cannot_start_stops_the_run_with_its_name():
    with pytest.raises(TrainingError, match="observer 'wandb' could not start: ConnectionError"):
        Observers(None, [("wandb", Flaky(fail_start=True))]).start("run", {}, 0)
