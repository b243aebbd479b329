"""Verify many responses in worker processes, so that evaluating 500 problems x 8 samples
is not dominated by sympy.

A verifier opts in with a class attribute ``verify_in_processes = True`` (the ``math``
verifier: math-verify parses with sympy, milliseconds to seconds per response). Workers are
spawned (not forked: the parent holds torch's threads, maybe CUDA or a vLLM engine) and
rebuild the verifier from its registered name and options, through the same plugins as the
parent. Each worker verifies on its own main thread, where math-verify's alarm-based
timeout bounds every call: a pathological expression scores 0 with reason ``timeout``, as
it does in a single process.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from cgrpo.types import Problem, Verdict

# fewer go inline: a chunk's round trip to a worker (pickling problems, ~1 ms) would not pay
# off; the workers start once, at the first batch this large (~2 s), and stay for the run
MIN_RESPONSES = 64
TASKS_PER_WORKER = 4  # a batch is cut into this many tasks per worker: few round trips,
# yet a worker that drew slow responses (sympy on a long expression) is not left alone

log = logging.getLogger(__name__)
_built: dict[str, Any] = {}  # in a worker: verifiers by (name, options)


def _verify_chunk(name: str, options: dict[str, Any], pairs: list[tuple[str, Problem]]):
    key = name + json.dumps(options, sort_keys=True, default=str)
    if key not in _built:
        from cgrpo.interfaces import BuildContext
        from cgrpo.plugins import get_registries

        _built[key] = get_registries()["verifier"].build(name, options, BuildContext())
    verifier = _built[key]
    return [verifier.verify(response, problem) for response, problem in pairs]


def auto_workers(setting: int, processes: int = 1) -> int:
    """``setting`` workers, or with 0 this process's share of the cores (``processes``
    trainers under torchrun share them) minus one for itself, at least 1, at most 8."""
    share = (os.cpu_count() or 1) // max(1, processes)
    return setting if setting > 0 else max(1, min(8, share - 1))


class VerifyPool:
    """A lazily started pool of ``workers`` processes (1 = verify in this process)."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def verify(
        self,
        verifier: Any,
        spec: tuple[str, dict[str, Any]] | None,
        pairs: list[tuple[str, Problem]],
    ) -> list[Verdict]:
        """Verdicts of ``pairs`` (response, problem), in order. In this process when the
        verifier has not opted in, ``spec`` is None, there is one worker or few pairs."""
        parallel = (
            getattr(verifier, "verify_in_processes", False)
            and spec is not None
            and self.workers > 1
            and len(pairs) >= MIN_RESPONSES
        )
        if not parallel:
            return [verifier.verify(response, problem) for response, problem in pairs]
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn")
            )
            log.info("verifying %s responses in %d worker processes", spec[0], self.workers)
        name, options = spec
        size = -(-len(pairs) // (self.workers * TASKS_PER_WORKER))  # ceiling division
        chunks = [pairs[i : i + size] for i in range(0, len(pairs), size)]
        futures = [self._pool.submit(_verify_chunk, name, options, c) for c in chunks]
        try:
            return [verdict for f in futures for verdict in f.result()]
        except Exception as exc:  # a worker died (OOM killer, a crash in C) or could not start
            log.warning(
                "verification worker processes failed (%s: %s); verifying in the trainer's "
                "process from now on",
                type(exc).__name__,
                exc,
            )
            self.close()
            self.workers = 1
            return [verifier.verify(response, problem) for response, problem in pairs]

    def verify_routed(
        self,
        default: tuple[Any, tuple[str, dict[str, Any]] | None],
        routes: dict[str, tuple[Any, tuple[str, dict[str, Any]]]],
        pairs: list[tuple[str, Problem]],
    ) -> list[Verdict]:
        """Like :meth:`verify`, each pair scored by the verifier of its problem's mixture
        source (``metadata["task"]`` in ``routes``), else by ``default``; in order."""
        groups: dict[str | None, list[int]] = {}
        for i, (_, problem) in enumerate(pairs):
            key = problem.metadata.get("task")
            groups.setdefault(key if key in routes else None, []).append(i)
        out: list[Verdict | None] = [None] * len(pairs)
        for key, indices in groups.items():
            verifier, spec = routes[key] if key is not None else default
            verdicts = self.verify(verifier, spec, [pairs[i] for i in indices])
            for i, verdict in zip(indices, verdicts, strict=True):
                out[i] = verdict
        return out  # type: ignore[return-value]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
