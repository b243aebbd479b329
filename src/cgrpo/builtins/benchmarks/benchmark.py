"""A benchmark read from rows: field mapping, multiple-choice options, prompt template,
verifier and default sampling. The presets (``presets.py``) are this class with the public
datasets' field names and the settings their published numbers use.
"""

from __future__ import annotations

import copy
import hashlib
import random
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator
from pydantic_core import PydanticUndefined

from cgrpo.builtins.benchmarks.repeats import collapse_repeats
from cgrpo.builtins.benchmarks.sources import Source
from cgrpo.builtins.specs import QuestionTemplate, VerifierChoice
from cgrpo.builtins.tasks.fields import (
    MISSING,
    field_value,
    fields_present,
    prompt_of,
    source_label,
)
from cgrpo.errors import DataError
from cgrpo.types import Problem

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
RESERVED_NAMES = ("avg", "avg_math")  # macro averages: eval/avg/..., eval/avg_math/...


class BenchmarkOptions(BaseModel):
    """Options every row-based benchmark takes (a preset changes their defaults)."""

    model_config = ConfigDict(extra="forbid")
    path: str | None = Field(
        None,
        description="local copy: a JSONL/JSON/Parquet/CSV file, or a directory holding the "
        "split's file (e.g. a hub snapshot); None = load `dataset` from the hub",
    )
    dataset: str | None = Field(None, description="hub dataset name (used when path is unset)")
    subset: str | None = Field(
        None, description="dataset configuration; in a directory, the file path must name it"
    )
    split: str = Field("test", description="split; in a directory, the file path must name it")
    revision: str | None = Field(None, description="hub revision (None = main)")
    question_field: str = Field(
        "question", description="field holding the question (a path: reward_model.question)"
    )
    messages_field: str | None = Field(
        None,
        description="field holding the prompt as chat messages ([{role, content}, ...]), "
        "rendered as they are (the template does not apply)",
    )
    answer_field: str = Field(
        "answer",
        description="column holding the reference (a list is joined with ', '; with "
        "choices_field a letter or a 0-based index)",
    )
    id_field: str | None = Field(None, description="id field (None = the row's position)")
    source_field: str | None = Field(
        None,
        description="field naming each row's source (verl's data_source): one metric set "
        "per source, eval/<name>/<source>/..., and their macro average eval/<name>/score",
    )
    repeats: Literal["rows", "samples"] = Field(
        "rows",
        description="rows repeating a problem (same source, prompt and answer): 'rows' "
        "scores each row as a problem; 'samples' reads them as one problem sampled once "
        "per row (k = the repeat count: avg@k, as verl's mean@k over repeated rows)",
    )
    choices_field: str | None = Field(
        None, description="multiple choice: column holding the options as a list"
    )
    correct_field: str | None = Field(
        None,
        description="multiple choice, GPQA style: column holding the correct option (the "
        "distractors are in incorrect_fields; the options are shuffled with shuffle_seed)",
    )
    incorrect_fields: list[str] = Field(
        default_factory=list, description="columns holding the distractors (with correct_field)"
    )
    shuffle_seed: int = Field(0, description="seed of the option order (with correct_field)")
    template: QuestionTemplate = Field(
        "{question}",
        description="the question as the model sees it, before data.prompt wraps it: "
        "{question} and, for multiple choice, {choices} ('A) ...' lines)",
    )
    verifier: VerifierChoice = Field(
        default_factory=lambda: VerifierChoice.model_construct(name="math", options={}),
        description="how responses are scored: a registered verifier with its options",
    )
    category: Literal["math", "general"] = Field(
        "math", description="which macro average it joins (eval/avg_math, always eval/avg)"
    )
    k: int = Field(1, ge=1, description="samples per problem (k > 1: avg@k, pass@k, maj@k)")
    temperature: float = Field(0.6, gt=0, description="temperature of the k samples")
    top_p: float = Field(0.95, gt=0, le=1, description="top-p of the k samples")
    limit: int | None = Field(None, ge=1, description="use only the first N problems")
    label: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="name in metrics and tables (eval/LABEL/...; default: the benchmark's "
        "name); needed to list one benchmark twice",
    )

    @field_validator("label")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        if v in RESERVED_NAMES:
            raise ValueError(f"{v!r} names a macro average (eval/{v}/...); choose another")
        return v

    @model_validator(mode="after")
    def _choices(self) -> BenchmarkOptions:
        if self.choices_field and self.correct_field:
            raise ValueError("set choices_field or correct_field, not both")
        if self.correct_field and not self.incorrect_fields:
            raise ValueError("correct_field needs incorrect_fields (the distractors)")
        if self.incorrect_fields and not self.correct_field:
            raise ValueError("incorrect_fields needs correct_field")
        if self.messages_field and self.template != "{question}":
            raise ValueError("template does not apply to a prompt given as messages_field")
        mc = bool(self.choices_field or self.correct_field)
        if mc != ("{choices}" in self.template):
            raise ValueError(
                "a multiple-choice benchmark's template must show {choices}, and only one "
                "with choices_field or correct_field may"
            )
        return self

    def ignored_settings(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.k == 1 and self.repeats == "rows":
            why = "applies to the k samples (k: 1 = greedy only); set k"
            out.update(temperature=why, top_p=why)
        if self.path is not None:
            why = "is for loading from the hub (path is set: the local copy is read); remove it"
            out.update(dataset=why, revision=why)
        if not self.correct_field:
            out["shuffle_seed"] = "shuffles GPQA-style options (no correct_field); remove it"
        return out


def preset_options(name: str, **defaults: Any) -> type[BenchmarkOptions]:
    """:class:`BenchmarkOptions` with a preset's defaults (shown by the recipe reference)."""
    fields: dict[str, Any] = {}
    for key, value in defaults.items():
        info = copy.copy(BenchmarkOptions.model_fields[key])  # constraints kept (k >= 1, ...)
        if key == "verifier":
            # not validated here: the registries are being built (a preset names a built-in)
            choice = VerifierChoice.model_construct(name=value["name"], options=value["options"])
            info.default = PydanticUndefined
            info.default_factory = lambda c=choice: c.model_copy(deep=True)
        else:
            info.default, info.default_factory = value, None
        fields[key] = (info.annotation, info)
    class_name = "".join(part.capitalize() for part in name.replace("-", "_").split("_"))
    return create_model(f"{class_name}Options", __base__=BenchmarkOptions, **fields)


class RowBenchmark:
    """Problems from rows (a local file or directory, or the hub), with the preset's field
    mapping and prompt template."""

    Options = BenchmarkOptions

    def __init__(self, options: BenchmarkOptions, context: Any = None, name: str = "benchmark"):
        self.options = options
        self.name = options.label or name
        o = options
        self.category = o.category
        self.verifier = (o.verifier.name, dict(o.verifier.options))
        self.k, self.temperature, self.top_p = o.k, o.temperature, o.top_p
        self.source = Source(o.path, o.dataset, o.subset, o.split, o.revision, name)

    def load(self) -> list[Problem]:
        """The benchmark's problems; with ``repeats: samples`` rows repeating a problem
        are one problem (``metadata["repeats"]``), and ``limit`` counts problems."""
        o = self.options
        problems: list[Problem] = []
        for where, row in self.source.rows():
            problems.append(self._problem(len(problems), where, row))
            if o.repeats == "rows" and o.limit is not None and len(problems) >= o.limit:
                break
        if not problems:
            raise DataError(f"benchmark {self.name}: no rows")
        if o.repeats == "samples":
            problems = collapse_repeats(problems, self.name)[: o.limit]
        return problems

    def describe(self) -> dict[str, Any]:
        template = self.options.template
        return {
            **self.source.describe(),
            "template_version": hashlib.sha256(template.encode()).hexdigest()[:12],
        }

    def _field(self, row: dict[str, Any], key: str, where: str, role: str) -> Any:
        value = field_value(row, key)
        if value is MISSING or (isinstance(value, str) and not value):
            why = "it is empty" if value is not MISSING else fields_present(row, key)
            raise DataError(
                f"{where}: benchmark {self.name}: missing or empty field {key!r} ({role}); "
                f"{why}. Map it with options.{role}_field"
            )
        return value

    def _head(self, index: int, where: str, row: Any) -> tuple[str, str, dict[str, Any]]:
        """``(question, id, metadata)`` of a row: the prompt's messages and the row's source
        (``metadata["task"]``, prefixed to the id) when the benchmark maps them."""
        o = self.options
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object with fields, got {type(row).__name__}")
        metadata: dict[str, Any] = {"source": where, "benchmark": self.name}
        if o.messages_field:
            question, metadata["messages"] = prompt_of(
                row, o.question_field, o.messages_field, where
            )
        else:
            question = str(self._field(row, o.question_field, where, "question")).strip()
        pid = field_value(row, o.id_field) if o.id_field else MISSING
        pid = str(index) if pid is MISSING else str(pid)
        if o.source_field:
            label = source_label(str(self._field(row, o.source_field, where, "source")))
            metadata["task"], pid = label, f"{label}/{pid}"
        return question, pid, metadata

    def _problem(self, index: int, where: str, row: Any) -> Problem:
        o = self.options
        question, pid, metadata = self._head(index, where, row)
        choices: list[str] = []
        if o.choices_field:
            choices = [str(c) for c in self._field(row, o.choices_field, where, "choices")]
            answer = self._letter(self._field(row, o.answer_field, where, "answer"), choices, where)
        elif o.correct_field:
            correct = str(self._field(row, o.correct_field, where, "correct")).strip()
            wrong = [
                str(self._field(row, f, where, "incorrect")).strip() for f in o.incorrect_fields
            ]
            choices = [correct, *wrong]
            random.Random(f"{o.shuffle_seed}:{pid}:{question}").shuffle(choices)
            answer = LETTERS[choices.index(correct)]
        else:
            answer = _answer_text(self._field(row, o.answer_field, where, "answer"))
        if len(choices) > len(LETTERS):
            raise DataError(f"{where}: {len(choices)} options; at most {len(LETTERS)}")
        listed = "\n".join(f"{LETTERS[i]}) {c}" for i, c in enumerate(choices))
        text = o.template.format(question=question, choices=listed)
        return Problem(pid, text, answer, metadata=metadata)

    def _letter(self, value: Any, choices: list[str], where: str) -> str:
        """A multiple-choice reference as a letter: given as a letter or a 0-based index."""
        text = str(value).strip()
        if text.isdigit() and int(text) < len(choices):
            return LETTERS[int(text)]
        if len(text) == 1 and text.upper() in LETTERS[: len(choices)]:
            return text.upper()
        raise DataError(
            f"{where}: answer {text!r} is neither a letter nor an index of the "
            f"{len(choices)} options"
        )


def _answer_text(value: Any) -> str:
    """A reference answer as text: lists (OlympiadBench's final_answer) joined with ', ',
    surrounding $ signs dropped (math-verify parses the bare expression), integral floats
    written as integers (AMC's 27.0)."""
    if isinstance(value, list):
        return ", ".join(_answer_text(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip().strip("$").strip()
