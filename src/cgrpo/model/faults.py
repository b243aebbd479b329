"""Fault injection for the crash-safety tests: ``CGRPO_CRASH_AT=point:N`` SIGKILLs the
process at a named point (``create:0`` while the tiny model is written, ``sft:N`` and
``step:N`` after a warm-up or RL step, ``checkpoint:N`` mid-checkpoint-write), so a test
kills a run at an exact place instead of racing a timer. Unset, it does nothing."""

from __future__ import annotations

import os

CRASH_ENV = "CGRPO_CRASH_AT"


def maybe_crash(point: str, step: int) -> None:
    """SIGKILL this process at ``point`` of ``step`` when CGRPO_CRASH_AT asks for it."""
    if os.environ.get(CRASH_ENV) == f"{point}:{step}":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
