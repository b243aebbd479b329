"""Parquet files in verl's row format, generated with pyarrow: the schema of the
Critique-GRPO authors' training file (a LUFFY OpenR1-Math subset) and validation file
(LUFFY's valid.parquet), with arithmetic problems the tiny test model can read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cgrpo.builtins.tasks.arithmetic import ArithmeticTask

SYSTEM = "You are a helpful assistant."
# the authors' validation file: (problems, rows per problem) of each data_source
FIVE_SOURCES = {"olympiad_bench": (3, 1), "math": (4, 1), "amc": (3, 4), "minerva": (2, 1),
                "aime": (2, 8)}  # fmt: skip


def verl_row(
    question: str, answer: str, source: str, index: int, split: str, solution: str | None
) -> dict[str, Any]:
    """One row as verl writes it; ``target`` (the reference solution as one assistant
    message) only in training files."""
    row: dict[str, Any] = {
        "data_source": source,
        "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        "ability": "math",
        "reward_model": {"ground_truth": answer, "style": "rule"},
        "extra_info": {"index": index, "split": split},
    }
    if solution is not None:
        row["target"] = [{"role": "assistant", "content": solution}]
    return row


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def training_rows(count: int = 48, seed: int = 1234) -> list[dict[str, Any]]:
    """``count`` one-digit sums with worked solutions, alternating two sources (one with a
    '/' in its name, as hub names have)."""
    problems = ArithmeticTask(ArithmeticTask.Options(size=count, digits=1, seed=seed)).load()
    sources = ("openr1/easy", "openr1/hard")
    return [
        verl_row(p.question, p.answer, sources[i % 2], i, "train", p.solution)
        for i, p in enumerate(problems)
    ]


def validation_rows(sources: dict[str, tuple[int, int]] = FIVE_SOURCES) -> list[dict[str, Any]]:
    """Each source's problems, each repeated as the authors' file repeats AMC and AIME;
    the repeats of a problem are adjacent and share its index."""
    total = sum(n for n, _ in sources.values())
    problems = iter(ArithmeticTask(ArithmeticTask.Options(size=total, seed=99)).load())
    rows = []
    for source, (count, repeats) in sources.items():
        for index in range(count):
            p = next(problems)
            rows += [verl_row(p.question, p.answer, source, index, "test", None)] * repeats
    return rows
