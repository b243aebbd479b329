"""Single requests in, batched ``generate`` calls out: the scheduler of the ``hf`` backend
and the adapter that gives any batch-only backend the asynchronous interface.

The per-group rollout asks for one prompt's samples at a time
(:class:`cgrpo.interfaces.AsyncPolicyBackend`). A backend that samples in batches (``hf``:
transformers ``generate``; a plugin that implements only ``generate``) gets those requests
through a :class:`RequestBatcher`: requests queue up while the backend is busy, and when it
is free every queued request with the same sampling settings goes out in one call, run in a
worker thread so that the event loop goes on verifying and critiquing meanwhile. Where the
backend streams (``generate_stream``), each request is answered as soon as its prompt is
done, not when the whole call is.

Such backends say ``batches_continuously = False``: the rollout then releases the requests of
a stage together, in group order (:class:`cgrpo.train.gates.LockStep`), so each call is
exactly the serial rollout's call and the samples never depend on timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cgrpo.interfaces import AsyncPolicyBackend
from cgrpo.types import Completion, SamplingParams


@dataclass
class _Request:
    prompt: list[int]
    params: SamplingParams
    seed: int | None
    future: asyncio.Future

    @property
    def key(self) -> tuple[SamplingParams, bool]:
        return self.params, self.seed is None


class RequestBatcher:
    """Gathers ``sample`` requests into ``policy.generate_stream`` (or ``generate``) calls
    on a worker thread, one call at a time, oldest request's settings first."""

    def __init__(self, policy: Any):
        self.policy = policy
        self.queue: list[_Request] = []
        self.worker: asyncio.Task | None = None

    async def sample(
        self, prompt_ids: Sequence[int], params: SamplingParams, seed: int | None = None
    ) -> list[Completion]:
        loop = asyncio.get_running_loop()
        request = _Request(list(prompt_ids), params, seed, loop.create_future())
        self.queue.append(request)
        if self.worker is None or self.worker.done() or self.worker.get_loop() is not loop:
            self.worker = loop.create_task(self._work())
        try:
            return await request.future
        except asyncio.CancelledError:  # still queued: never sent; in a running call: dropped
            if request in self.queue:
                self.queue.remove(request)
            raise

    async def _work(self) -> None:
        while self.queue:
            await asyncio.sleep(0)  # one turn of the loop: requests made together go together
            key = self.queue[0].key
            batch = [r for r in self.queue if r.key == key]
            self.queue = [r for r in self.queue if r.key != key]
            try:
                await asyncio.to_thread(self._call, batch, asyncio.get_running_loop())
            except Exception as exc:
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)

    def _call(self, batch: list[_Request], loop: asyncio.AbstractEventLoop) -> None:
        """One generate call (in the worker thread); answers each request as its prompt is
        done, through the loop."""
        prompts = [r.prompt for r in batch]
        params = batch[0].params
        seeds = None if batch[0].seed is None else [r.seed for r in batch]
        stream = getattr(self.policy, "generate_stream", None)
        if callable(stream):
            parts = stream(prompts, params, seeds=seeds)
        else:
            parts = [list(enumerate(self.policy.generate(prompts, params, seeds=seeds)))]
        for part in parts:
            for p, completions in part:
                loop.call_soon_threadsafe(_answer, batch[p].future, completions)


def _answer(future: asyncio.Future, completions: list[Completion]) -> None:
    if not future.done():  # a cancelled request's answer is dropped
        future.set_result(completions)


class BatchedPolicy:
    """A batch-only backend with the asynchronous interface added (:func:`as_async`)."""

    batches_continuously = False  # its numbers may depend on its batches: lock step

    def __init__(self, policy: Any):
        self.policy = policy
        self.batcher = RequestBatcher(policy)

    async def sample(
        self, prompt_ids: Sequence[int], params: SamplingParams, seed: int | None = None
    ) -> list[Completion]:
        return await self.batcher.sample(prompt_ids, params, seed)


def as_async(policy: Any) -> AsyncPolicyBackend:
    """``policy`` itself when it takes single requests (``sample``), else an adapter that
    gathers them into its batched ``generate`` calls."""
    if isinstance(policy, AsyncPolicyBackend):
        return policy
    return BatchedPolicy(policy)
