"""``mixture``: several tasks in one run, in set proportions, each with its own question
template and, if wanted, its own verifier.

The mixture is a finite list like any task (the trainer owns shuffling and position, so
resume stays exact): ``size`` problems (default: all the sources' problems together), of
which source i contributes ``size * weight_i / sum(weights)`` (largest remainders, so the
counts add up), drawn in a seeded order and cycling with a fresh order when it has fewer
than it must give. The list is interleaved by a seeded shuffle, so that ``data.shuffle:
false`` still mixes. Every problem carries its source's label (``metadata["task"]``),
which routes it to the source's verifier and splits the step metrics per source
(``reward/<label>/initial_mean``, ...). Serves ``data.task``, ``sft.task`` and
``eval.task`` alike.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cgrpo.builtins.specs import QuestionTemplate, TaskChoice, VerifierChoice
from cgrpo.errors import DataError
from cgrpo.types import Problem

log = logging.getLogger(__name__)


class MixtureSource(TaskChoice):
    """One source: a registered task with its options, weight, label, question template
    and verifier."""

    weight: float = Field(1.0, gt=0, description="its share of the mixture (relative)")
    label: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="name in metrics (reward/<label>/...); default: the task's name",
    )
    template: QuestionTemplate = Field(
        "{question}", description="the question as the model sees it before data.prompt"
    )
    verifier: VerifierChoice | None = Field(
        None, description="scores this source's responses (None: the recipe's verifier)"
    )

    @model_validator(mode="after")
    def _not_nested(self) -> MixtureSource:
        if self.name == "mixture":
            raise ValueError("a mixture cannot hold another mixture; list its sources here")
        return self

    @property
    def key(self) -> str:
        return self.label or self.name


class MixtureTask:
    """Several tasks in set proportions, each with its own template and verifier."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        sources: list[MixtureSource] = Field(
            description="[{name: jsonl, options: {path: a.jsonl}, weight: 3, label: a}, "
            "{name: arithmetic, weight: 1, verifier: exact}]"
        )
        size: int | None = Field(
            None, ge=1, description="problems in the mixture (None: all sources' together)"
        )
        seed: int = Field(0, description="seed of the draw and the interleaving")

        @field_validator("sources")
        @classmethod
        def _sources(cls, sources: list[MixtureSource]) -> list[MixtureSource]:
            if not sources:
                raise ValueError("name at least one source")
            labels = [s.key for s in sources]
            twice = sorted({x for x in labels if labels.count(x) > 1})
            if twice:
                raise ValueError(f"labels {twice} appear twice: give each source a label")
            return sources

    def __init__(self, options: Options, context: Any = None):
        self.options = options
        self.context = context
        self.verifiers = {  # label -> (name, options): the trainer builds and routes them
            s.key: (s.verifier.name, dict(s.verifier.options))
            for s in options.sources
            if s.verifier is not None
        }
        self.counts: dict[str, int] = {}

    def load(self) -> list[Problem]:
        from cgrpo.plugins import get_registries

        registry = get_registries()["task"]
        o = self.options
        loaded = [(s, registry.build(s.name, s.options, self.context).load()) for s in o.sources]
        total = o.size or sum(len(problems) for _, problems in loaded)
        counts = shares(total, [s.weight for s in o.sources])
        out: list[Problem] = []
        for (source, problems), count in zip(loaded, counts, strict=True):
            if not problems:
                raise DataError(f"mixture source {source.key}: no problems")
            self.counts[source.key] = count
            for p in draw(problems, count, random.Random(f"{o.seed}:{source.key}")):
                out.append(
                    dataclasses.replace(
                        p,
                        id=f"{source.key}/{p.id}",
                        question=source.template.format(question=p.question),
                        metadata={**p.metadata, "task": source.key},
                    )
                )
        random.Random(f"{o.seed}:interleave").shuffle(out)
        log.info("mixture of %d problems: %s", len(out),
                 ", ".join(f"{k} {v}" for k, v in self.counts.items()))  # fmt: skip
        return out


def shares(total: int, weights: list[float]) -> list[int]:
    """``total`` split in proportion to ``weights``, in integers that add up to it (largest
    remainders; ties to the earlier source)."""
    exact = [total * w / sum(weights) for w in weights]
    counts = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def draw(problems: list[Problem], count: int, rng: random.Random) -> list[Problem]:
    """``count`` problems in seeded order, without repeats until each was drawn once."""
    out: list[Problem] = []
    while len(out) < count:
        order = list(range(len(problems)))
        rng.shuffle(order)
        out += [problems[i] for i in order[: count - len(out)]]
    return out
