"""Errors users see. Each one says what is wrong, where, and how to fix it."""

from __future__ import annotations

from dataclasses import dataclass


class CgrpoError(Exception):
    """Base class of every error cgrpo raises on purpose."""


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a recipe: a dotted path into the recipe, a message and a fix hint."""

    path: str
    message: str
    hint: str = ""

    def render(self) -> str:
        text = f"{self.path or '<recipe>'}: {self.message}"
        return f"{text}\n      fix: {self.hint}" if self.hint else text


class RecipeError(CgrpoError):
    """A recipe has one or more problems. All of them are collected before this is raised."""

    def __init__(self, problems: list[ConfigIssue], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        where = f" in {self.source}" if self.source else ""
        n = len(self.problems)
        head = f"recipe{where} has {n} problem{'s' if n != 1 else ''}:"
        return "\n".join([head, *(f"  {i}. {p.render()}" for i, p in enumerate(self.problems, 1))])


class PluginError(CgrpoError):
    """A plugin could not be loaded, or two plugins registered the same component name."""


class UnknownComponentError(CgrpoError):
    """A recipe or a call named a component that no loaded plugin registered."""

    def __init__(self, kind: str, name: str, available: list[str], suggestion: str | None):
        self.kind, self.name, self.available, self.suggestion = kind, name, available, suggestion
        msg = f"unknown {kind} {name!r}; available: {', '.join(available) or '(none)'}"
        if suggestion:
            msg += f". Did you mean {suggestion!r}?"
        super().__init__(msg)


class UsageError(CgrpoError):
    """A command line that cannot work as given (exit 2, like a bad recipe)."""


class DataError(CgrpoError):
    """A data file or row is unusable (names the file and line)."""


class InputError(CgrpoError):
    """What the user gave cannot be used as it is (data files, a reward function): exit 2
    like a bad recipe, with the file and line and the fix, never a traceback."""


class VerifierError(InputError):
    """Every verification of a step raised: the reward function is broken, not the policy
    (exit 2, naming the error's file and line)."""


class TrainingError(CgrpoError):
    """A failure during training that the user must act on (names the stage and the fix)."""
