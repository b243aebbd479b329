"""Where the groups of one step meet: requests gathered into one call, and the lock-step
schedule that reproduces the serial rollout's batches.

The per-group rollout runs one coroutine per group on one event loop. Two helpers decide
what goes out together:

- :class:`TickGather`: what coroutines submit while the loop runs the callbacks that are
  ready now goes out in one call, in submission order: the groups a batch of responses
  finished together are verified in one call to the worker pool and critiqued in one call
  of a critic that batches (``self``: one generation pass).
- :class:`LockStep`: with ``run.reproducible_sampling`` and a sampler whose numbers depend
  on the batch it runs in (``hf``: a different padding is a different rounding), each
  stage's requests go out only when every group still running has reached that stage, in
  group order: the serial rollout's batches exactly, so its rows are reproduced bit for
  bit. Otherwise every wait returns at once.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any


class TickGather:
    """Hands everything submitted during one turn of the event loop to ``flush(items)`` in
    one call (items in submission order); ``flush`` returns the results in that order, or
    an awaitable of them. A submitter that is cancelled meanwhile does not stop the call."""

    def __init__(self, flush: Callable[[list[Any]], Any]):
        self.flush = flush
        self.items: list[Any] = []
        self.waiters: list[tuple[int, int, asyncio.Future]] = []  # (first item, count, result)
        self.running: set[asyncio.Task] = set()

    async def submit(self, items: list[Any]) -> list[Any]:
        loop = asyncio.get_running_loop()
        if not self.items:
            loop.call_soon(self._go)
        future = loop.create_future()
        self.waiters.append((len(self.items), len(items), future))
        self.items += items
        return await future

    def _go(self) -> None:
        items, waiters = self.items, self.waiters
        self.items, self.waiters = [], []
        task = asyncio.ensure_future(self._call(items, waiters))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def _call(self, items: list[Any], waiters: list) -> None:
        try:
            out = self.flush(items)
            if inspect.isawaitable(out):
                out = await out
            out = list(out)
        except Exception as exc:  # every submitter of this call sees the failure
            for *_, future in waiters:
                if not future.done():
                    future.set_exception(exc)
            return
        for first, count, future in waiters:
            if not future.done():
                future.set_result(out[first : first + count])


STAGE_ORDER = ("sample", "critique", "refine")


class LockStep:
    """With ``on``, :meth:`reach` waits until every group still running waits at some
    stage; then the earliest such stage (in :data:`STAGE_ORDER`) lets its groups go, in
    group order, so that what they submit next reaches the sampler or critic in one turn of
    the loop, in that order. Each group has one coroutine waiting at a time. Off, it
    returns at once."""

    def __init__(self, on: bool, groups: int):
        self.on = on
        self.live = groups
        self.waiting: dict[str, list[tuple[int, asyncio.Future]]] = {s: [] for s in STAGE_ORDER}

    async def reach(self, stage: str, group: int) -> None:
        if not self.on:
            return
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.waiting[stage].append((group, future))
        # later, not now: the last group to arrive must not run ahead of the others
        loop.call_soon(self._release)
        await future

    def leave(self) -> None:
        """A group is done (its rows are selected)."""
        self.live -= 1
        if self.on:
            asyncio.get_running_loop().call_soon(self._release)

    def _release(self) -> None:
        if sum(len(w) for w in self.waiting.values()) < self.live:
            return
        for stage in STAGE_ORDER:
            if self.waiting[stage]:
                for _, future in sorted(self.waiting[stage], key=lambda item: item[0]):
                    if not future.done():
                        future.set_result(None)
                self.waiting[stage] = []
                return
