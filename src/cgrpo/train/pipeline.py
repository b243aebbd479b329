"""The bounded-staleness pipeline (``rollout.max_staleness: N >= 1``, docs/pipeline.md):
the rollouts of the next steps run on a loop of their own while the trainer updates.

The trainer, at step t: takes step t's rows (waiting for them if they are not done), drops
and resamples the groups holding a row more than N updates old, submits the rollouts up
to step t + N (each one starts on the weights the servers hold then: t, so its rows are at
most N old when step t + N trains on them), updates, and pushes the new weights. Requests
in flight during a push finish on the weights they started with (the servers' pause
waits for them); a request made after it samples with the new ones, so one group's
refinement may be newer than its samples (both are recorded). With a fixed lag
(``run.reproducible_sampling``) the trainer waits for every rollout in flight before the
push: step t then trains exactly the rows sampled with the weights of step t - N, whatever
the timing.

A checkpoint saves the data position before the oldest rollout in flight: a resumed run
draws the same problems again and samples them from the checkpoint's weights.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from cgrpo.builtins.policies.server_pool import EventLoopThread
from cgrpo.errors import TrainingError
from cgrpo.train.rollout import Rollout
from cgrpo.train.timeline import Span


def check_pipeline(policy: Any, world: int) -> None:
    """Refuse what a pipelined rollout cannot do: a backend without ``accept_lag`` (one
    that samples in the trainer's processes, or a plugin that does not say how old a
    sample it accepts), and several training processes (not built yet)."""
    if not hasattr(policy, "accept_lag"):
        raise TrainingError(
            f"rollout.max_staleness >= 1 needs a policy backend that samples outside the "
            f"training processes and accepts samples from older weights (accept_lag); "
            f"{type(policy).__name__} does not. Use policy: vllm-server, or set "
            "rollout.max_staleness: 0"
        )
    if world > 1:
        raise TrainingError(
            f"rollout.max_staleness >= 1 runs in one training process for now (this run has "
            f"{world}); set rollout.max_staleness: 0 under torchrun"
        )


@dataclass
class InFlight:
    """One submitted rollout: its step, the data position before its problems were drawn
    (what a checkpoint saves), and its future."""

    step: int
    data_state: dict[str, int]
    future: concurrent.futures.Future


@dataclass
class Pipeline:
    """Rollouts in flight on a loop thread of their own, and who waited for whom.

    ``events`` are the run's timeline lanes ``(lane, label, start, end)`` in seconds since
    the pipeline started: ``rollout`` spans (label: the step it is for) and ``trainer``
    spans (``wait`` for rows, ``update``, ``sync``)."""

    max_staleness: int
    fixed_lag: bool
    t0: float = field(default_factory=time.perf_counter)
    inflight: dict[int, InFlight] = field(default_factory=dict)
    events: list[tuple[str, str, float, float]] = field(default_factory=list)
    trainer_wait: float = 0.0
    server_wait: float = 0.0
    submitted_through: int | None = None  # the last step whose rollout was submitted
    running: int = 0
    idle_since: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    loop: EventLoopThread = field(default_factory=lambda: EventLoopThread("cgrpo-pipeline"))

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def submit(self, step: int, data_state: dict[str, int], coro: Coroutine) -> None:
        """Start ``coro`` (step ``step``'s rollout) on the pipeline's loop."""
        with self.lock:
            if self.running == 0 and self.idle_since is not None:
                self.server_wait += self.now() - self.idle_since
            self.idle_since = None
            self.running += 1
        future = self.loop.submit(self._timed(step, coro))
        future.add_done_callback(self._finished)
        self.inflight[step] = InFlight(step, dict(data_state), future)
        self.submitted_through = step

    async def _timed(self, step: int, coro: Coroutine) -> Rollout:
        start = self.now()
        try:
            return await coro
        finally:
            self.events.append(("rollout", str(step), start, self.now()))

    def _finished(self, _future: concurrent.futures.Future) -> None:
        with self.lock:
            self.running -= 1
            if self.running == 0:
                self.idle_since = self.now()

    def take(self, step: int) -> Rollout:
        """Step ``step``'s rollout, waiting for it (the wait is the trainer's)."""
        if step not in self.inflight:
            raise TrainingError(f"pipeline: step {step}'s rollout was never submitted")
        with self.waiting():
            return self.inflight.pop(step).future.result()

    def drain(self) -> None:
        """Wait for every rollout in flight (the fixed lag's wait before a push)."""
        with self.waiting():
            concurrent.futures.wait([f.future for f in self.inflight.values()])

    def waiting(self):
        return self.span("trainer", "wait", add_to="trainer_wait")

    def span(self, lane: str, label: str, add_to: str | None = None):
        """A context recording a trainer span (and adding its length to a total)."""
        return _Span(self, lane, label, add_to)

    def run(self, coro: Coroutine) -> Any:
        """Run ``coro`` on the pipeline's loop and wait for it (a resampled group)."""
        with self.waiting():
            return self.loop.run(coro)

    def data_state(self) -> dict[str, int] | None:
        """The data position before the oldest rollout in flight (None: none in flight)."""
        if not self.inflight:
            return None
        return dict(self.inflight[min(self.inflight)].data_state)

    def step_metrics(self) -> dict[str, float]:
        """The step's waits (counters restart), and the lanes' spans since the last call."""
        with self.lock:
            if self.running == 0 and self.idle_since is not None:  # idle until now
                now = self.now()
                self.server_wait += now - self.idle_since
                self.idle_since = now
            out = {"trainer_wait_s": self.trainer_wait, "server_wait_s": self.server_wait}
            self.trainer_wait = self.server_wait = 0.0
        return out

    def take_events(self) -> list[list[Any]]:
        """The spans recorded since the last call, for timeline.jsonl."""
        events, self.events = self.events, []
        return [[lane, label, round(a, 3), round(b, 3)] for lane, label, a, b in events]

    def close(self) -> int:
        """Cancel the rollouts in flight (a resumed run samples them again from its
        checkpoint's weights); returns how many there were."""
        pending = list(self.inflight.values())
        for f in pending:
            f.future.cancel()
        concurrent.futures.wait([f.future for f in pending], timeout=30)
        self.inflight.clear()
        self.loop.close()
        return len(pending)


class _Span:
    def __init__(self, pipe: Pipeline, lane: str, label: str, add_to: str | None):
        self.pipe, self.lane, self.label, self.add_to = pipe, lane, label, add_to

    def __enter__(self) -> None:
        self.start = self.pipe.now()

    def __exit__(self, *exc: Any) -> None:
        end = self.pipe.now()
        self.pipe.events.append((self.lane, self.label, self.start, end))
        if self.add_to is not None:
            with self.pipe.lock:
                setattr(self.pipe, self.add_to, getattr(self.pipe, self.add_to) + end - self.start)


def drop_groups(ro: Rollout, groups: set[int]) -> tuple[Rollout, dict[str, float]]:
    """``ro`` without ``groups`` (the rest renumbered 0.. in order, rows and records
    re-indexed), and what was thrown away: rows, groups, critiques (paid, never used)."""
    keep = sorted({r.group for r in ro.records} - groups)
    new_group = {g: i for i, g in enumerate(keep)}
    record_index: dict[int, int] = {}
    records = []
    for i, rec in enumerate(ro.records):
        if rec.group in new_group:
            record_index[i] = len(records)
            records.append(rec)
    dropped = [r for r in ro.records if r.group not in new_group]
    row_index: dict[int, int] = {}
    rows = []
    for i, row in enumerate(ro.rows):
        if row.group in new_group:
            row_index[i] = len(rows)
            row.group = new_group[row.group]
            rows.append(row)
    for rec in records:
        rec.group = new_group[rec.group]
        rec.row = None if rec.row is None else row_index[rec.row]
        rec.parent = None if rec.parent is None else record_index[rec.parent]
    wasted = [r.critique for r in dropped if r.critique is not None and r.kind == "initial"]
    out = Rollout(rows=rows, records=records, seconds=dict(ro.seconds))
    out.critiques = [c for c in ro.critiques if all(c is not w for w in wasted)]
    out.refinements_skipped = ro.refinements_skipped
    out.speculative = dict(ro.speculative)
    out.timeline = [
        Span(new_group[s.group], s.stage, s.start, s.end, s.wasted)
        for s in ro.timeline
        if s.group in new_group
    ]
    count_outcomes(out)
    lost = {"rows_dropped": float(len(ro.rows) - len(rows)), "groups_resampled": float(len(groups))}
    lost["wasted_critiques"] = float(len(wasted))
    return out, lost


def count_outcomes(ro: Rollout) -> None:
    """``groups_all_failed`` and ``groups_rescued`` from the records (after groups were
    dropped or merged)."""
    failed, rescued = 0, 0
    for g in sorted({r.group for r in ro.records}):
        mine = [r for r in ro.records if r.group == g]
        if not any(r.verdict.correct for r in mine if r.kind == "initial"):
            failed += 1
            rescued += any(r.verdict.correct for r in mine if r.kind == "refinement" and r.kept)
    ro.groups_all_failed, ro.groups_rescued = failed, rescued
