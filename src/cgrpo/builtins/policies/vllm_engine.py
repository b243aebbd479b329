"""Continuous batching on the in-process vLLM engine: requests join the running batch
between engine steps, and one driver hands every finished request to whoever asked.

The per-group rollout submits each group's samples, and later each refinement, as single
requests (:meth:`EngineDriver.add`) while other groups' requests still decode; a coroutine
on the event loop (:meth:`EngineDriver.start`) steps the engine while any request is in
flight and yields to the loop between steps, so verification, critiques and new requests
run between two decode steps. Synchronous callers (``generate``, the weight-sync probe, a
``self`` critic sampling with the policy) step the same engine through the same driver, so
nobody's outputs are lost whoever happens to step it.

Why the in-process engine and not vLLM's ``AsyncLLM``: see docs/rollout.md (``AsyncLLM``
runs the engine core in a separate process: ~30 s to start on CPU, weights that can only be
reloaded from a folder, and a second process competing for the trainer's cores).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

from cgrpo.errors import TrainingError
from cgrpo.types import Completion, SamplingParams


class EngineDriver:
    """The owner of an in-process vLLM engine's outputs (``llm`` is a ``vllm.LLM``)."""

    def __init__(self, llm: Any):
        self.llm = llm
        # request id -> (on finished output, on failure)
        self.handlers: dict[str, tuple[Callable[[Any], None], Callable[[Exception], None]]] = {}
        self.ids = itertools.count()
        self.task: asyncio.Task | None = None

    @property
    def engine(self) -> Any:
        return self.llm.llm_engine

    def new_id(self) -> str:
        return f"cgrpo-{next(self.ids)}"

    def add(
        self,
        request_id: str,
        prompt: Sequence[int],
        params: Any,
        done: Callable[[Any], None],
        failed: Callable[[Exception], None],
    ) -> None:
        """Queue one request; ``done(output)`` gets its final output from whichever caller
        steps the engine, ``failed(exc)`` an engine failure."""
        self.handlers[request_id] = (done, failed)
        self.engine.add_request(request_id, {"prompt_token_ids": list(prompt)}, params)

    def abort(self, request_ids: Iterable[str]) -> None:
        live = [r for r in request_ids if self.handlers.pop(r, None) is not None]
        if live:
            self.engine.abort_request(live)

    def step(self) -> None:
        """One engine step; every request it finished goes to its handler."""
        if not self.engine.has_unfinished_requests():
            raise TrainingError(
                f"the vLLM engine stopped with {len(self.handlers)} requests unanswered"
            )
        for output in self.engine.step():
            if output.finished and output.request_id in self.handlers:
                done, _ = self.handlers.pop(output.request_id)
                done(output)

    def run(self, request_ids: Iterable[str]) -> None:
        """Step until the requests ``request_ids`` are finished (synchronous callers)."""
        ids = list(request_ids)
        while any(r in self.handlers for r in ids):
            self.step()

    def start(self) -> None:
        """Make sure a coroutine steps the engine on the running loop."""
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done() or self.task.get_loop() is not loop:
            self.task = loop.create_task(self._drive())

    async def _drive(self) -> None:
        while self.handlers:
            try:
                self.step()
            except Exception as exc:  # every waiter hears of it
                for _, failed in list(self.handlers.values()):
                    failed(exc)
                self.handlers.clear()
                return
            await asyncio.sleep(0)  # between two steps: the loop's other work, new requests


def put_to(queue: asyncio.Queue, j: int, output: Any) -> None:
    queue.put_nowait((j, output))


def append_to(out: list, p: int, output: Any) -> None:
    out.append((p, output))


def ignore(exc: Exception) -> None:
    """A synchronous caller steps the engine itself and sees its failures raised there."""


class EngineRequests:
    """Single requests on a sampler's driver (mixed into ``VLLMSampler``, which provides
    ``driver``, ``_params`` and ``_completions``)."""

    driver: EngineDriver

    @staticmethod
    def _seed(seed: int | None) -> int:
        """``seed``, or one drawn from torch's RNG (which the loop reseeds every step)."""
        import torch

        return int(torch.randint(0, 2**31 - 1, (1,))) if seed is None else seed

    async def sample_each(
        self, prompt_ids: Sequence[int], params: SamplingParams, seed: int | None = None
    ) -> AsyncIterator[tuple[int, Completion]]:
        """The ``params.n`` completions of one prompt as (index, completion), each as soon
        as it is finished. The n samples are n requests of one sequence with seeds seed + j,
        which is how vLLM itself runs a request for n seeded samples, so the tokens are
        those of ``generate`` with that seed. Requests join the engine's running batch; a
        caller that stops early (cancelled) aborts the ones still running."""
        base, one = self._seed(seed), dataclasses.replace(params, n=1)
        arrived: asyncio.Queue = asyncio.Queue()
        ids = [self.driver.new_id() for _ in range(params.n)]
        for j, request_id in enumerate(ids):
            self.driver.add(
                request_id,
                prompt_ids,
                self._params(one, base + j),
                functools.partial(put_to, arrived, j),
                functools.partial(put_to, arrived, -1),
            )
        self.driver.start()
        pending = set(ids)
        try:
            for _ in ids:
                j, output = await arrived.get()
                if j < 0:
                    raise output
                pending.discard(ids[j])
                yield j, self._completions(prompt_ids, output)[0]
        finally:
            self.driver.abort(pending)

    async def sample(
        self, prompt_ids: Sequence[int], params: SamplingParams, seed: int | None = None
    ) -> list[Completion]:
        """:meth:`sample_each`'s completions in index order, when all are done."""
        out: list[Completion | None] = [None] * params.n
        async for j, completion in self.sample_each(prompt_ids, params, seed):
            out[j] = completion
        return out  # type: ignore[return-value]

    def run_requests(self, prompts: Sequence[Sequence[int]], params: Sequence[Any]) -> list[Any]:
        """vLLM outputs of raw requests (``vllm.SamplingParams``), stepping the engine
        through the driver (requests of other callers in flight keep their outputs)."""
        out: list[Any] = [None] * len(prompts)
        ids = [self.driver.new_id() for _ in prompts]
        for i, (request_id, prompt, request) in enumerate(zip(ids, prompts, params, strict=True)):
            self.driver.add(
                request_id, prompt, request, functools.partial(out.__setitem__, i), ignore
            )
        try:
            self.driver.run(ids)
        finally:
            self.driver.abort(ids)
        return out
