"""Rows that repeat a problem, read as sampled attempts at it.

A validation file in verl's format repeats the small benchmarks' rows so that a single
sampled response per row averages over several attempts: the Critique-GRPO authors' file
(LUFFY's ``valid.parquet``) holds each AMC problem 4 times and each AIME problem 8 times.
verl scores such a file by grouping the responses of each source by prompt (its
``process_validation_metrics``): ``mean@n`` over a prompt's n responses, averaged over
prompts, which is avg@n. Read that way, the repeats of a problem are one problem sampled n
times (``metadata["repeats"] = n``); every problem of a source must repeat equally often,
so that the source has one avg@k.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

from cgrpo.errors import DataError
from cgrpo.types import Problem


def problem_key(p: Problem) -> tuple[Any, ...]:
    """What makes two rows the same problem: their source, prompt and reference answer."""
    messages = p.metadata.get("messages")
    prompt = tuple((m["role"], m["content"]) for m in messages) if messages else p.question
    return p.metadata.get("task"), prompt, p.answer


def collapse_repeats(problems: list[Problem], benchmark: str) -> list[Problem]:
    """One problem per group of repeated rows, in order of first appearance, with
    ``metadata["repeats"]`` = the group's size; a source whose problems repeat unequally
    is an error naming the counts."""
    groups: dict[tuple[Any, ...], list[Problem]] = {}
    for p in problems:
        groups.setdefault(problem_key(p), []).append(p)
    counts: dict[Any, Counter[int]] = {}
    for (source, *_), rows in groups.items():
        counts.setdefault(source, Counter())[len(rows)] += 1
    for source, seen in counts.items():
        if len(seen) > 1:
            shown = ", ".join(f"{n} problems {r}x" for r, n in sorted(seen.items()))
            name = f"source {source!r}" if source is not None else "its rows"
            raise DataError(
                f"benchmark {benchmark}: {name} repeat problems unequally ({shown}); avg@k "
                "over repeats needs one count per source. Set options.repeats: rows to "
                "score every row as a problem (or remove the stray duplicates)"
            )
    return [
        dataclasses.replace(rows[0], metadata={**rows[0].metadata, "repeats": len(rows)})
        for rows in groups.values()
    ]
