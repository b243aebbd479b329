"""Problems from JSONL / CSV / Parquet files or a ``datasets`` dataset, with field mapping.

A bad row (missing or empty question or answer, undecodable line) is reported with its
file and line; ``bad_rows: skip`` drops it and keeps a report, ``error`` (default) stops
before training starts, never deep inside a step.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cgrpo.errors import DataError
from cgrpo.types import Problem

log = logging.getLogger(__name__)


class FieldMap(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question_field: str = Field("question", description="column holding the question")
    answer_field: str = Field("answer", description="column holding the reference answer")
    solution_field: str | None = Field(
        None, description="optional column with a worked solution (used by the SFT warm-up)"
    )
    id_field: str | None = Field(None, description="optional id column (default: row number)")
    messages_field: str | None = Field(
        None,
        description="column holding the prompt as chat messages ([{role, content}, ...]); "
        "used as they are instead of question_field (needs the chat template)",
    )
    bad_rows: Literal["error", "skip"] = Field(
        "error", description="'error' stops with the file and line; 'skip' drops and reports"
    )
    limit: int | None = Field(None, ge=1, description="use only the first N good rows")


class FileOptions(FieldMap):
    path: str = Field(description="the data file")

    @field_validator("path")
    @classmethod
    def _exists(cls, v: str) -> str:
        if not Path(v).expanduser().is_file():
            raise ValueError(f"data file not found: {v}")
        return v


class _RowTask:
    """Shared row -> Problem conversion; subclasses yield ``(line, row_dict)``."""

    def __init__(self, options: FieldMap, context: Any = None):
        self.options = options
        self.skipped: list[str] = []

    def where(self) -> str:
        raise NotImplementedError

    def rows(self) -> Iterator[tuple[int, Any]]:
        raise NotImplementedError

    def load(self) -> list[Problem]:
        o = self.options
        problems: list[Problem] = []
        for line, row in self.rows():
            try:
                problems.append(self._problem(line, row))
            except DataError as exc:
                if o.bad_rows == "error":
                    raise DataError(f"{exc} (set bad_rows: skip to drop such rows)") from None
                self.skipped.append(str(exc))
            if o.limit is not None and len(problems) >= o.limit:
                break
        if self.skipped:
            log.warning(
                "%s: skipped %d bad rows; first: %s",
                self.where(),
                len(self.skipped),
                self.skipped[0],
            )
        if not problems:
            raise DataError(f"{self.where()}: no usable rows")
        return problems

    def _problem(self, line: int, row: Any) -> Problem:
        o = self.options
        at = f"{self.where()}:{line}"
        if not isinstance(row, dict):
            raise DataError(f"{at}: expected an object with fields, got {type(row).__name__}")
        values = {}
        metadata: dict[str, Any] = {"source": at}  # file:line, for messages about it
        if o.messages_field is not None:
            messages = _messages(row.get(o.messages_field), o.messages_field, at)
            metadata["messages"] = messages
            users = [m["content"] for m in messages if m["role"] == "user"]
            row = {**row, o.question_field: row.get(o.question_field) or users[-1]}
        for role, key in (("question", o.question_field), ("answer", o.answer_field)):
            if key not in row or row[key] is None:
                have = ", ".join(map(str, row)) or "none"
                raise DataError(f"{at}: missing field {key!r} ({role}); fields present: {have}")
            value = str(row[key]).strip()
            if not value:
                raise DataError(f"{at}: field {key!r} ({role}) is empty")
            values[role] = value
        solution = row.get(o.solution_field) if o.solution_field else None
        pid = str(row[o.id_field]) if o.id_field and row.get(o.id_field) is not None else str(line)
        return Problem(
            pid,
            values["question"],
            values["answer"],
            None if solution is None else str(solution),
            metadata=metadata,
        )


def _messages(value: Any, field: str, at: str) -> list[dict[str, str]]:
    """A row's chat messages, checked: a non-empty list of {role, content} strings with at
    least one user message."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{at}: field {field!r} must be a non-empty list of chat messages")
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)):  # fmt: skip
            raise DataError(f"{at}: {field}[{i}] must be {{role: ..., content: ...}} strings")
    if not any(m["role"] == "user" for m in value):
        raise DataError(f"{at}: {field!r} has no user message")
    return [{"role": m["role"], "content": m["content"]} for m in value]


class _FileTask(_RowTask):
    def __init__(self, options: FileOptions, context: Any = None):
        super().__init__(options, context)
        self.path = Path(options.path).expanduser()
        if not self.path.is_file():
            raise DataError(f"data file not found: {self.path} (data.task.options.path)")

    def where(self) -> str:
        return str(self.path)


class JSONLTask(_FileTask):
    """One JSON object per line; fields mapped by name."""

    Options = FileOptions

    def rows(self):
        with self.path.open("rb") as fh:  # decoded line by line: a bad byte names its line
            for line_no, raw in enumerate(fh, 1):
                try:
                    line = raw.decode("utf-8")
                    if not line.strip():
                        continue
                    yield line_no, json.loads(line)
                except UnicodeDecodeError as exc:
                    self._bad(f"{self.path}:{line_no}: {_not_utf8(exc)}")
                except json.JSONDecodeError as exc:
                    self._bad(f"{self.path}:{line_no}: invalid JSON: {exc.msg}")

    def _bad(self, message: str) -> None:
        if self.options.bad_rows == "error":
            raise DataError(message + " (set bad_rows: skip to drop such rows)")
        self.skipped.append(message)


class CSVTask(_FileTask):
    """A CSV file with a header row; fields mapped by column name."""

    Options = FileOptions

    def rows(self):
        bad = _first_non_utf8_line(self.path)
        if bad is not None:  # csv reads across lines: refuse the file, naming the line
            raise DataError(f"{self.path}:{bad[0]}: {bad[1]}")
        with self.path.open(encoding="utf-8", newline="") as fh:
            for i, row in enumerate(csv.DictReader(fh)):
                yield i + 2, row  # line 1 is the header


def _not_utf8(exc: UnicodeDecodeError) -> str:
    byte = exc.object[exc.start : exc.start + 1].hex()
    return (
        f"not UTF-8 (byte 0x{byte} at column {exc.start + 1}); re-save the file as UTF-8 "
        "(e.g. iconv -f latin1 -t utf-8)"
    )


def _first_non_utf8_line(path: Path) -> tuple[int, str] | None:
    """(line number, message) of the first line that is not UTF-8, or None."""
    with path.open("rb") as fh:
        for line_no, raw in enumerate(fh, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return line_no, _not_utf8(exc)
    return None


class ParquetTask(_FileTask):
    """A Parquet file (needs pyarrow: pip install 'cgrpo[data]'); row numbers from 1."""

    Options = FileOptions

    def rows(self):
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise DataError("the parquet task needs pyarrow: pip install 'cgrpo[data]'") from exc
        table = pq.read_table(self.path)
        yield from enumerate(table.to_pylist(), 1)


class HFDatasetOptions(FieldMap):
    path: str = Field(description="a hub dataset name or a local dataset directory")
    split: str = Field("train", description="split to use")
    subset: str | None = Field(None, description="dataset configuration name")


class HFDatasetTask(_RowTask):
    """A `datasets` dataset: hub name or local directory (needs pip install 'cgrpo[data]')."""

    Options = HFDatasetOptions

    def where(self) -> str:
        return f"{self.options.path}[{self.options.split}]"

    def rows(self):
        try:
            import datasets
        except ImportError as exc:
            raise DataError(
                "the hf_dataset task needs `datasets`: pip install 'cgrpo[data]'"
            ) from exc
        o = self.options
        local = Path(o.path).expanduser()
        saved = ("dataset_dict.json", "state.json")
        if local.is_dir() and any((local / name).exists() for name in saved):
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[o.split]
        else:
            ds = datasets.load_dataset(o.path, o.subset, split=o.split)
        yield from enumerate(ds, 1)
