"""Components named inside another component's options (a benchmark's verifier, a
mixture's tasks), checked against the registry when the recipe is validated."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import AfterValidator, model_validator

from cgrpo.config.schema import ComponentSpec


class RegisteredSpec(ComponentSpec):
    """A registered component of ``kind`` and its options."""

    kind: ClassVar[str]

    @model_validator(mode="after")
    def _known(self) -> RegisteredSpec:
        from cgrpo.plugins import get_registries

        problem = get_registries()[self.kind].problem_with(self.name, self.options)
        if problem:
            raise ValueError(problem)
        return self


class VerifierChoice(RegisteredSpec):
    """A registered verifier and its options (checked against the registry)."""

    kind = "verifier"


class TaskChoice(RegisteredSpec):
    """A registered task and its options (checked against the registry)."""

    kind = "task"


def _has_question(template: str) -> str:
    if "{question}" not in template:
        raise ValueError("template must contain {question}")
    return template


# a question template (benchmarks, mixture sources): applied before data.prompt wraps it
QuestionTemplate = Annotated[str, AfterValidator(_has_question)]
