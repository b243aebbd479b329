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
import threading
import time
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


def safe_verify(verifier: Any, response: str, problem: Problem) -> Verdict:
    """``verifier``'s verdict, or reward 0 naming the exception and where it was raised
    (:meth:`Verdict.from_exception`) when it raises: any verifier, a plugin's too, is
    counted and reported by the trainer instead of ending the step in a traceback."""
    try:
        return verifier.verify(response, problem)
    except Exception as exc:
        return Verdict.from_exception(exc)


def _verify_chunk(name: str, options: dict[str, Any], pairs: list[tuple[str, Problem]]):
    key = name + json.dumps(options, sort_keys=True, default=str)
    if key not in _built:
        from cgrpo.interfaces import BuildContext
        from cgrpo.plugins import get_registries

        _built[key] = get_registries()["verifier"].build(name, options, BuildContext())
    verifier = _built[key]
    return [safe_verify(verifier, response, problem) for response, problem in pairs]


def _exit_with(parent: int) -> None:
    """A worker's initializer: exit as soon as ``parent`` (the trainer) is gone. A SIGKILLed
    trainer cannot shut its pool down, and an orphaned worker would wait for tasks forever
    while holding the trainer's stdout and stderr, so whoever reads them (a launcher,
    ``subprocess.run``) would hang instead of seeing the crash."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-trainer", daemon=True).start()


def auto_workers(setting: int, processes: int = 1) -> int:
    """``setting`` workers, or with 0 this process's share of the cores (``processes``
    trainers under torchrun share them) minus one for itself, at least 1, at most 8."""
    share = (os.cpu_count() or 1) // max(1, processes)
    return setting if setting > 0 else max(1, min(8, share - 1))


class PendingVerdicts:
    """The verdicts of a batch of (response, problem) pairs that may still be running in
    the worker processes: :meth:`done` polls, :meth:`result` waits and returns them in
    order. Parts the pool did not take were verified when the batch was submitted."""

    def __init__(self, pool: VerifyPool, size: int):
        self.pool = pool
        self.out: list[Verdict | None] = [None] * size
        # (indices, verifier, pairs, futures) of the parts running in the workers
        self.running: list[tuple[list[int], Any, list[tuple[str, Problem]], list[Any]]] = []

    def done(self) -> bool:
        return all(f.done() for *_, futures in self.running for f in futures)

    def result(self) -> list[Verdict]:
        for indices, verifier, pairs, futures in self.running:
            try:
                verdicts = [verdict for f in futures for verdict in f.result()]
            except Exception as exc:  # a worker died (OOM killer, a crash in C), or none started
                self.pool.give_up(exc)
                verdicts = [safe_verify(verifier, response, problem) for response, problem in pairs]
            for i, verdict in zip(indices, verdicts, strict=True):
                self.out[i] = verdict
        self.running = []
        self.pool.report_first_error(self.out)  # type: ignore[arg-type]
        return self.out  # type: ignore[return-value]


class VerifyPool:
    """A lazily started pool of ``workers`` processes (1 = verify in this process)."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self.broken = False  # a worker failed: verify in this process from now on
        self.first_error: Verdict | None = None  # the first verification that raised

    def report_first_error(self, verdicts: list[Verdict]) -> None:
        """Show the first verification that raised, with its traceback, once per pool
        (console and train.log); later ones are counted (``verify/errors``), not shown."""
        if self.first_error is not None:
            return
        self.first_error = next((v for v in verdicts if v is not None and v.raised), None)
        if self.first_error is not None:
            log.warning(
                "the verifier raised (the response gets reward 0; later errors are only "
                "counted, in verify/errors): %s\n%s",
                self.first_error.reason,
                (self.first_error.trace or "").rstrip(),
            )

    def verify(
        self,
        verifier: Any,
        spec: tuple[str, dict[str, Any]] | None,
        pairs: list[tuple[str, Problem]],
    ) -> list[Verdict]:
        """Verdicts of ``pairs`` (response, problem), in order. In this process when the
        verifier has not opted in, ``spec`` is None, there is one worker or few pairs."""
        return self.submit_routed((verifier, spec), {}, pairs).result()

    def verify_routed(
        self,
        default: tuple[Any, tuple[str, dict[str, Any]] | None],
        routes: dict[str, tuple[Any, tuple[str, dict[str, Any]]]],
        pairs: list[tuple[str, Problem]],
    ) -> list[Verdict]:
        """Like :meth:`verify`, each pair scored by the verifier of its problem's mixture
        source (``metadata["task"]`` in ``routes``), else by ``default``; in order."""
        return self.submit_routed(default, routes, pairs).result()

    def submit_routed(
        self,
        default: tuple[Any, tuple[str, dict[str, Any]] | None],
        routes: dict[str, tuple[Any, tuple[str, dict[str, Any]]]],
        pairs: list[tuple[str, Problem]],
        batch: int | None = None,
    ) -> PendingVerdicts:
        """Start verifying ``pairs`` as :meth:`verify_routed` would and return at once.
        The parts whose verifier opted in go to the workers; the others are verified here
        and now. ``batch`` is the size of the whole batch these pairs belong to (a step
        submits its groups as they are sampled): the workers are used when it, not this
        part, reaches :data:`MIN_RESPONSES`."""
        groups: dict[str | None, list[int]] = {}
        for i, (_, problem) in enumerate(pairs):
            key = problem.metadata.get("task")
            groups.setdefault(key if key in routes else None, []).append(i)
        pending = PendingVerdicts(self, len(pairs))
        for key, indices in groups.items():
            verifier, spec = routes[key] if key is not None else default
            part = [pairs[i] for i in indices]
            if self._use_workers(verifier, spec, len(part) if batch is None else batch):
                pending.running.append((indices, verifier, part, self._submit(spec, part)))
                continue
            for i, (response, problem) in zip(indices, part, strict=True):
                pending.out[i] = safe_verify(verifier, response, problem)
        return pending

    def _use_workers(self, verifier: Any, spec: Any, size: int) -> bool:
        """Whether a part of ``size`` goes to the workers. Off the main thread (the
        pipelined rollouts' loop) always, even with one worker: there a verifier that
        opts in (math) cannot use its alarm-based timeout and forks a process per call
        (~0.2 s each), where one spawned worker answers a batch in a round trip."""
        if not getattr(verifier, "verify_in_processes", False) or spec is None or self.broken:
            return False
        if threading.current_thread() is not threading.main_thread():
            return True
        return self.workers > 1 and size >= MIN_RESPONSES

    def _submit(self, spec: tuple[str, dict[str, Any]], pairs: list[tuple[str, Problem]]):
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_exit_with,
                initargs=(os.getpid(),),
            )
            log.info("verifying %s responses in %d worker processes", spec[0], self.workers)
        name, options = spec
        size = -(-len(pairs) // (self.workers * TASKS_PER_WORKER))  # ceiling division
        chunks = [pairs[i : i + size] for i in range(0, len(pairs), size)]
        return [self._pool.submit(_verify_chunk, name, options, c) for c in chunks]

    def give_up(self, exc: BaseException) -> None:
        """Verify in this process from now on (a worker failed with ``exc``)."""
        if self._pool is not None:
            log.warning(
                "verification worker processes failed (%s: %s); verifying in the trainer's "
                "process from now on",
                type(exc).__name__,
                exc,
            )
        self.close()
        self.workers, self.broken = 1, True

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
