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
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cgrpo.errors import TrainingError


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
