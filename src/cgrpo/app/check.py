"""``cgrpo check`` reads the data: every row of every task a recipe uses, before any GPU.

A run stops at the first bad row of a file task (``bad_rows: error``, the default) and
skips rows whose prompts are over ``data.prompt.max_prompt_tokens``; both are better
learned from ``check`` on a laptop than an hour into a job. The check lists *every* bad
row (file:line): malformed JSON, bytes that are not UTF-8, missing or empty fields, an
empty file, and prompts that do not fit. Only the tokenizer is loaded (no weights).

Rows a task skips by the user's choice (``bad_rows: skip``) are reported as warnings; all
the rest are problems, and ``check`` exits 2 on any.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

from cgrpo.errors import CgrpoError, InputError

log = logging.getLogger(__name__)

SHOWN = 10  # rows listed per task and kind; the rest are counted


@dataclass
class TaskReport:
    """What reading one task found."""

    section: str  # the recipe path of the task: data.task, eval.task, sft.task
    name: str
    rows: int = 0  # usable problems read
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    note: str = ""  # what was not checked, and why
    skippable: bool = False  # bad rows that the task's bad_rows: skip would drop
    loaded: list[Any] = field(default_factory=list, repr=False)  # the usable problems

    def lines(self) -> list[str]:
        read = sum(p.metadata.get("repeats", 1) for p in self.loaded) or self.rows
        head = f"{self.section} ({self.name}): {read} usable rows read"
        if read != self.rows:  # repeated rows read as one problem each (repeats: samples)
            head += f" as {self.rows} problems"
        if sources := source_counts(self.loaded):
            head += f"; per source: {sources}"
        if self.note:
            head += f"; {self.note}"
        out = [head]
        for kind, items in (("problem", self.problems), ("warning", self.warnings)):
            out += [f"  {kind}: {text}" for text in items[:SHOWN]]
            if len(items) > SHOWN:
                out.append(f"  ... and {len(items) - SHOWN} more {kind}s")
        return out


def source_counts(problems: list[Any]) -> str:
    """Problems per source (``metadata["task"]``: a source_field or a mixture's labels),
    with the rows each repeats ("aime 30 x8, math 500"); "" when they name none."""
    counts: dict[str, list[int]] = {}
    for p in problems:
        if (label := p.metadata.get("task")) is not None:
            counts.setdefault(label, [0, p.metadata.get("repeats", 1)])[0] += 1
    return ", ".join(f"{k} {n}" + (f" x{r}" if r > 1 else "") for k, (n, r) in counts.items())


def tasks_of(recipe: Any) -> list[tuple[str, Any]]:
    """``(recipe path, ComponentSpec)`` of every task the run would read (a section left
    None, as in a recipe that did not validate, is not read)."""
    out = [("data.task", recipe.data.task)] if recipe.data.task is not None else []
    if recipe.eval.every and recipe.eval.task is not None:
        out.append(("eval.task", recipe.eval.task))
    if recipe.sft.steps and recipe.sft.task is not None:
        out.append(("sft.task", recipe.sft.task))
    if recipe.sft.steps and recipe.sft.refinement_share and recipe.sft.refinement_task:
        out.append(("sft.refinement_task", recipe.sft.refinement_task))
    return [item for path, spec in out for item in _sources(path, spec)]


def _sources(path: str, spec: Any) -> list[tuple[str, Any]]:
    """A mixture's sources, each read and reported on its own (its bad rows by file and
    line); any other task as it is."""
    if spec.name != "mixture":
        return [(path, spec)]
    from cgrpo.config.schema import ComponentSpec

    sources = spec.options.get("sources") or []
    return [
        (
            f"{path}.options.sources[{i}]",
            ComponentSpec(name=s["name"], options=s.get("options") or {}),
        )
        for i, s in enumerate(sources)
    ]


def read_task(section: str, spec: Any, registries: Any, max_rows: int | None) -> TaskReport:
    """Load one task as the run would, but collecting every bad row instead of stopping
    at the first (``bad_rows: skip`` for the check itself), reading at most ``max_rows``
    usable rows where the task has a ``limit`` option."""
    report = TaskReport(section, spec.name)
    comp = registries["task"].get(spec.name)
    fields = comp.options.model_fields
    options = dict(spec.options)
    skip_is_chosen = options.get("bad_rows", "error") == "skip"
    if "bad_rows" in fields:
        options["bad_rows"] = "skip"
    if max_rows is not None and "limit" in fields:
        options["limit"] = min(max_rows, options.get("limit") or max_rows)
    quiet = logging.getLogger("cgrpo")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the task's own "skipped N rows" warning: listed below
    task, problems, failure = None, [], None
    try:
        task = registries["task"].build(spec.name, options, None)
        problems = task.load()
    except CgrpoError as exc:  # an empty file, a missing one, no usable row at all
        failure = str(exc)
    finally:
        quiet.setLevel(level)
    if max_rows is not None:
        problems = problems[:max_rows]
    skipped = list(getattr(task, "skipped", []))
    (report.warnings if skip_is_chosen and failure is None else report.problems).extend(skipped)
    report.skippable = bool(skipped) and not skip_is_chosen and "bad_rows" in fields
    if failure is not None:
        report.problems.append(failure)
    report.rows, report.loaded = len(problems), problems
    return report


def read_benchmark(section: str, spec: Any, registries: Any, max_rows: int | None) -> TaskReport:
    """Load one benchmark as evaluation would (its local copy, or the hub when reachable);
    a file it cannot read, or a row without its fields, is a problem."""
    report = TaskReport(section, spec.name)
    try:
        bench = registries["benchmark"].build(spec.name, spec.options, None)
        problems = bench.load()
    except CgrpoError as exc:
        report.problems.append(str(exc))
        problems = []
    if max_rows is not None:
        problems = problems[:max_rows]
    report.rows, report.loaded = len(problems), problems
    return report


def prompt_builder(recipe: Any) -> tuple[Any, str]:
    """``(PromptBuilder, "")`` with the recipe's tokenizer, or ``(None, why not)``."""
    from pathlib import Path

    from cgrpo.model.prompts import PromptBuilder

    m = recipe.model
    path = Path(m.path).expanduser()
    try:
        if (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(
                str(path), trust_remote_code=m.trust_remote_code
            )
        elif m.create is not None:  # the tiny model's tokenizer, built offline
            from cgrpo.model.tiny import build_tokenizer

            tokenizer = build_tokenizer()
        else:
            return None, f"prompt lengths not checked: no tokenizer at model.path {m.path}"
    except (OSError, ValueError) as exc:
        return None, f"prompt lengths not checked: cannot load the tokenizer ({exc})"
    builder = PromptBuilder(
        tokenizer,
        recipe.data.prompt,
        recipe.refinement,
        m.max_length,
        recipe.sampling.max_new_tokens,
    )
    return builder, ""


def check_data(
    recipe: Any, registries: Any, max_rows: int | None = None, prompt_lengths: bool = True
) -> list[TaskReport]:
    """Read every task of ``recipe`` (the first ``max_rows`` usable rows of each when
    given), add what the run would refuse about them (:func:`add_run_requirements`) and,
    with ``prompt_lengths``, check that each prompt fits ``data.prompt.max_prompt_tokens``."""
    read = [read_task(section, spec, registries, max_rows) for section, spec in tasks_of(recipe)]
    if recipe.eval.every:
        read += [
            read_benchmark(f"eval.benchmarks[{i}]", spec, registries, max_rows)
            for i, spec in enumerate(recipe.eval.benchmarks)
            if spec is not None
        ]
    add_run_requirements(recipe, read, max_rows)
    if prompt_lengths:
        _check_prompt_lengths(recipe, read)
    return read


def _check_prompt_lengths(recipe: Any, reports: list[TaskReport]) -> None:
    builder, why = prompt_builder(recipe)
    limit = recipe.data.prompt.max_prompt_tokens
    for report in reports:
        if builder is None:
            report.note = why
            continue
        for p in report.loaded:
            n = len(builder.prompt_ids(p))
            if n > limit:
                where = p.metadata.get("source", f"problem id {p.id}")
                report.problems.append(
                    f"{where}: prompt of {n} tokens is over data.prompt.max_prompt_tokens="
                    f"{limit} (cgrpo run would skip it; raise the limit or drop the row)"
                )


def add_run_requirements(recipe: Any, reports: list[TaskReport], max_rows: int | None) -> None:
    """What ``cgrpo run`` refuses about data that reads fine, added to the report of the
    section concerned: a warm-up (or its refinement examples) or demonstrations in the
    group without one reference solution, and a hold-out (``eval.size``) that would take
    every problem."""
    from cgrpo.train.data import (
        NO_DEMONSTRATION_SOLUTIONS,
        NO_REFINEMENT_SOLUTIONS,
        NO_SOLUTIONS,
        holdout_takes_all,
    )

    def of(section: str) -> list[TaskReport]:  # a mixture's sources are reported each
        return [r for r in reports if r.section == section
                or r.section.startswith(f"{section}.options.sources[")]  # fmt: skip

    sft, ev = recipe.sft, recipe.eval
    if sft.steps:
        _require_solutions(of("sft.task" if sft.task is not None else "data.task"), NO_SOLUTIONS)
        if sft.refinement_share and sft.refinement_task is not None:
            _require_solutions(of("sft.refinement_task"), NO_REFINEMENT_SOLUTIONS)
    algorithm = getattr(recipe, "algorithm", None)  # None: a recipe that did not validate
    if algorithm is not None and algorithm.demonstrations.per_group:
        _require_solutions(of("data.task"), NO_DEMONSTRATION_SOLUTIONS)
    data = [r for r in reports if r.section == "data.task"]  # not a mixture's sources
    if ev.every and not ev.benchmarks and ev.task is None and data and not data[0].problems:
        whole = max_rows is None or data[0].rows < max_rows  # else only a part was read
        too_many = holdout_takes_all(ev.holdout_size, data[0].rows) if whole else None
        if too_many:
            data[0].problems.append(too_many)


def _require_solutions(reports: list[TaskReport], message: str) -> None:
    loaded = [p for r in reports for p in r.loaded]
    if loaded and not any(p.solution for p in loaded):
        reports[0].problems.append(message)


def preflight(recipe: Any, registries: Any) -> None:
    """``cgrpo run``'s look at the data before it builds a model or makes a directory:
    ``cgrpo check``'s reader, so both name the same rows (file:line); raises
    :class:`InputError` (exit 2) listing every problem. Prompt lengths are left to the
    run, which skips over-long prompts and says so."""
    reports = check_data(recipe, registries, prompt_lengths=False)
    bad = [line for r in reports if r.problems for line in r.lines()]
    bad += [f"(set {r.section}.options.bad_rows: skip to drop such rows)"
            for r in reports if r.skippable]  # fmt: skip
    if bad:
        raise InputError(
            "the data has problems (cgrpo check lists them the same way):\n  " + "\n  ".join(bad)
        )


def partial_recipe(raw: dict[str, Any], registries: Any) -> Any:
    """The sections :func:`check_data` reads, from a recipe that did not validate: each
    task and benchmark whose own section validates (the others None), the rest of
    ``eval`` and ``sft`` without their invalid keys. So ``cgrpo check`` reports the data's
    problems together with the recipe's instead of one after the other."""
    from types import SimpleNamespace

    from cgrpo.config.schema import ComponentSpec, EvalConfig, SFTConfig
    from cgrpo.config.validate import component_issues, with_default_component_names

    raw = with_default_component_names(copy.deepcopy(raw))
    _, valid = component_issues(raw, registries)

    def spec(path: str, value: Any) -> Any:
        if path not in valid:
            return None
        return ComponentSpec(name=ComponentSpec.model_validate(value).name,
                             options=valid[path].model_dump())  # fmt: skip

    sections = {
        k: raw.get(k) if isinstance(raw.get(k), dict) else {} for k in ("data", "eval", "sft")
    }
    ev, sft = _lenient(EvalConfig, sections["eval"]), _lenient(SFTConfig, sections["sft"])
    ev.task = spec("eval.task", sections["eval"].get("task"))
    ev.benchmarks = [spec(f"eval.benchmarks[{i}]", b) for i, b in enumerate(ev.benchmarks)]
    sft.task = spec("sft.task", sections["sft"].get("task"))
    sft.refinement_task = spec("sft.refinement_task", sections["sft"].get("refinement_task"))
    data = SimpleNamespace(task=spec("data.task", sections["data"].get("task")))
    return SimpleNamespace(data=data, eval=ev, sft=sft)


def _lenient(section: Any, data: dict[str, Any]) -> Any:
    """``section`` validated from ``data`` without the keys that fail (their defaults)."""
    from pydantic import ValidationError

    data = dict(data)
    for _ in range(len(data) + 1):
        try:
            return section.model_validate(data)
        except ValidationError as exc:
            for err in exc.errors():
                data.pop(err["loc"][0] if err["loc"] else None, None)
    return section()
