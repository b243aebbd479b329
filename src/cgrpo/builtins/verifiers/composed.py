"""Rewards without a plugin package: ``python`` (a function in a file) and ``weighted`` (a
weighted sum of verifiers, e.g. correctness plus a format reward).

``python`` loads ``function`` from the file at ``path`` (relative to the working
directory), as TRL users write reward functions. It is checked when the recipe is
validated (``cgrpo check`` too): the file exists and imports, the function exists and
takes ``(response, problem)``. It may return a bool, a number or a
:class:`cgrpo.types.Verdict`. A number counts as *correct* (for refinement selection,
group pass rates and evaluation) when it is at least ``correct_at``. A function that
raises for one response gives that response reward 0 with reason ``error: ...`` naming
the exception and its file:line (:meth:`cgrpo.types.Verdict.from_exception`); the
trainer counts such errors and stops when every verification of a step raised. A
non-finite number is counted by the trainer like any verifier's.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import math
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cgrpo.types import Problem, Verdict


@functools.cache
def _import_file(resolved: str, shown: str, mtime_ns: int) -> Any:
    """The module of a reward file, executed once per version of the file (validation and
    building the verifier, and every ``weighted`` part naming it, share it)."""
    module_name = f"cgrpo_reward_{abs(hash(resolved))}"
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise ValueError(f"{shown} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ValueError(f"importing {shown} failed: {type(exc).__name__}: {exc}") from exc
    sys.modules[module_name] = module
    return module


def load_function(path: str, name: str) -> Any:
    """``name`` from the Python file at ``path``; ValueError saying what is wrong."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"reward file not found: {path}")
    module = _import_file(str(file.resolve()), path, file.stat().st_mtime_ns)
    module_name = module.__name__
    function = getattr(module, name, None)
    if not callable(function):
        found = sorted(
            n
            for n, v in vars(module).items()
            if inspect.isfunction(v) and v.__module__ == module_name and not n.startswith("_")
        )
        raise ValueError(
            f"{path} has no function {name!r}; functions there: {', '.join(found) or 'none'}"
        )
    try:
        inspect.signature(function).bind("response", "problem")
    except TypeError as exc:
        raise ValueError(
            f"{path}:{name} must take (response, problem): its signature is "
            f"{inspect.signature(function)}"
        ) from exc
    return function


def as_verdict(value: Any, correct_at: float) -> Verdict:
    """A reward function's return value as a Verdict."""
    if isinstance(value, Verdict):
        return value
    if isinstance(value, bool):
        return Verdict(float(value), value)
    if isinstance(value, int | float):
        score = float(value)
        return Verdict(score, math.isfinite(score) and score >= correct_at)
    raise TypeError(f"returned {type(value).__name__}; return a bool, a number or a Verdict")


class PythonVerifier:
    """A reward function (response, problem) -> bool | float | Verdict from a Python file."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        path: str = Field(description="the Python file (relative to the working directory)")
        function: str = Field("score", description="the function's name in that file")
        correct_at: float = Field(
            1.0, description="a numeric reward counts as correct when at least this"
        )

        @model_validator(mode="after")
        def _loads(self) -> PythonVerifier.Options:
            load_function(self.path, self.function)  # ValueError -> a recipe error
            return self

    # a user's function may be slow (sympy, a parser): it runs in the verification pool,
    # where each worker imports the file itself
    verify_in_processes = True

    def __init__(self, options: Options, context: Any = None):
        self.options = options
        self.function = load_function(options.path, options.function)
        self.where = f"{options.path}:{options.function}"

    def verify(self, response: str, problem: Problem) -> Verdict:
        try:
            return as_verdict(self.function(response, problem), self.options.correct_at)
        except Exception as exc:  # reward 0; the trainer counts, shows and judges it
            return Verdict.from_exception(exc)


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="a registered verifier")
    options: dict[str, Any] = Field(default_factory=dict, description="its options")
    weight: float = Field(1.0, description="its weight in the sum")


class WeightedVerifier:
    """A weighted sum of verifiers' rewards; the first part decides what counts as correct."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        parts: list[Part] = Field(
            description="[{name: math, weight: 1.0}, {name: python, options: {...}, "
            "weight: 0.2}]; correctness is the first part's"
        )

        @field_validator("parts")
        @classmethod
        def _valid_parts(cls, parts: list[Part]) -> list[Part]:
            from cgrpo.plugins import get_registries

            if not parts:
                raise ValueError("name at least one verifier")
            registry = get_registries()["verifier"]
            for i, part in enumerate(parts):
                if part.name == "weighted":
                    raise ValueError(f"parts[{i}]: a weighted verifier cannot nest another")
                problem = registry.problem_with(part.name, part.options)
                if problem:
                    raise ValueError(f"parts[{i}]: {problem}")
            return parts

    def __init__(self, options: Options, context: Any = None):
        from cgrpo.plugins import get_registries

        registry = get_registries()["verifier"]
        self.parts = [(p.weight, registry.build(p.name, p.options, context)) for p in options.parts]
        # worth the worker processes when any part is (they rebuild every part there)
        self.verify_in_processes = any(
            getattr(v, "verify_in_processes", False) for _, v in self.parts
        )

    def verify(self, response: str, problem: Problem) -> Verdict:
        verdicts = [(w, v.verify(response, problem)) for w, v in self.parts]
        first = verdicts[0][1]
        score = sum(w * v.score for w, v in verdicts)
        raised = next((v for _, v in verdicts if v.raised), None)  # a failing part is said
        shown = raised or first
        return Verdict(score, first.correct, first.extracted, shown.reason, shown.trace)
