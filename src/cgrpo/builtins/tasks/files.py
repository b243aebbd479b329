"""Problems from JSONL / CSV / Parquet files or a ``datasets`` dataset, with field mapping.

A field option names a column or a path into nested records (``reward_model.ground_truth``,
:mod:`cgrpo.builtins.tasks.fields`); ``format: verl`` sets them all for verl/LUFFY rows. A
bad row (missing or empty question or answer, undecodable line) is reported with its file
and line and the field's path; ``bad_rows: skip`` drops it and keeps a report, ``error``
(default) stops before training starts, never deep inside a step.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cgrpo.builtins.tasks.fields import (
    MISSING,
    apply_format,
    field_value,
    prompt_of,
    required_text,
    source_label,
    text_of,
)
from cgrpo.errors import DataError
from cgrpo.types import Problem

log = logging.getLogger(__name__)


class FieldMap(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["verl"] | None = Field(
        None,
        description="a row format that sets the field options below at once: 'verl' "
        "(verl/LUFFY parquet: prompt messages, reward_model.ground_truth, target as the "
        "solution, data_source as the source, extra_info.index as the id); field options "
        "given beside it win",
    )
    question_field: str = Field(
        "question", description="field holding the question (a path: a.b, list index: a.0)"
    )
    answer_field: str = Field("answer", description="field holding the reference answer")
    solution_field: str | None = Field(
        None,
        description="optional field with a worked solution (the SFT warm-up's "
        "demonstrations); a chat-message list is its assistant message's content",
    )
    id_field: str | None = Field(None, description="optional id field (default: row number)")
    messages_field: str | None = Field(
        None,
        description="field holding the prompt as chat messages ([{role, content}, ...]); "
        "used as they are instead of question_field (needs the chat template)",
    )
    source_field: str | None = Field(
        None,
        description="optional field naming each row's source (verl's data_source): step "
        "metrics per source (reward/<source>/...), ids <source>/<id>",
    )
    bad_rows: Literal["error", "skip"] = Field(
        "error", description="'error' stops with the file and line; 'skip' drops and reports"
    )
    limit: int | None = Field(None, ge=1, description="use only the first N good rows")

    @model_validator(mode="after")
    def _format(self) -> FieldMap:
        apply_format(self, self.format)
        return self


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
        metadata: dict[str, Any] = {"source": at}  # file:line, for messages about it
        question, messages = prompt_of(row, o.question_field, o.messages_field, at)
        if messages is not None:
            metadata["messages"] = messages
        answer = required_text(row, o.answer_field, "answer", at)
        solution = None
        if o.solution_field and (value := field_value(row, o.solution_field)) is not MISSING:
            solution = text_of(value, o.solution_field, at)  # a demonstration, as text
        pid = field_value(row, o.id_field) if o.id_field else MISSING
        pid = str(line) if pid is MISSING else str(pid)
        if o.source_field:
            label = source_label(required_text(row, o.source_field, "source", at))
            metadata["task"] = label  # the label mixtures set: metrics per source
            pid = f"{label}/{pid}"
        return Problem(pid, question, answer, solution, metadata=metadata)


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
        import pyarrow as pa

        try:
            table = pq.read_table(self.path)
        except (OSError, pa.ArrowException) as exc:  # not parquet, truncated, unreadable
            raise DataError(f"{self.path}: cannot be read as Parquet: {exc}") from None
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
