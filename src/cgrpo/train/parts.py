"""What a run trains with: the model and the components the composition root built from
the recipe (cgrpo.app.build), handed to the loop as one object."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cgrpo.model.prompts import PromptBuilder
from cgrpo.types import Problem


@dataclass
class Built:
    model: Any
    tokenizer: Any
    device: Any
    policy: Any
    critic: Any
    verifier: Any
    advantage: Any
    problems: list[Problem]
    prompts: PromptBuilder
    skipped_long: int
    eval_problems: list[Problem]
    precision: Any  # cgrpo.model.precision.Precision: autocast for the trainer's model
    ref_model: Any = None  # the KL reference (None when kl_coef == 0): model/reference.py
    eval_sets: list[Any] = field(default_factory=list)  # cgrpo.train.evaluation.EvalSet
    # mixture sources with a verifier of their own: label -> (verifier, (name, options))
    verifier_routes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
