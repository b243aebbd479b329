"""Chain-of-thought critique prompts: named, versioned templates and the verdict line.

A template's ``version`` is part of the API critic's cache key, so editing a template
(and bumping its version) never serves critiques written for the old wording. Recipes
choose a template by name or give their own text (``template_text``), which is then
versioned by its hash.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from cgrpo.types import CritiqueRequest


@dataclass(frozen=True)
class CritiqueTemplate:
    """System and user messages; the user text has {question}, {answer}, {response}."""

    name: str
    version: str
    system: str
    user: str

    def messages(self, request: CritiqueRequest) -> list[dict[str, str]]:
        user = self.user.format(
            question=request.problem.question,
            answer=request.problem.answer,
            response=request.response,
        )
        out = [{"role": "system", "content": self.system}] if self.system else []
        return [*out, {"role": "user", "content": user}]


COT_V1 = CritiqueTemplate(
    name="cot",
    version="cot-v1",
    system="You are a meticulous math teacher who grades students' solutions.",
    user=(
        "Problem:\n{question}\n\n"
        "Reference answer: {answer}\n\n"
        "Student solution:\n{response}\n\n"
        "Critique the student solution step by step. Check each step against the problem "
        "and the reference answer, point out the first error and explain how to fix it. "
        "Do not write a complete new solution. End with exactly one line: "
        '"Conclusion: correct" or "Conclusion: incorrect".'
    ),
)

COT_NO_ANSWER_V1 = CritiqueTemplate(
    name="cot_no_answer",
    version="cot-no-answer-v1",
    system=COT_V1.system,
    user=(
        "Problem:\n{question}\n\n"
        "Student solution:\n{response}\n\n"
        "Critique the student solution step by step, point out the first error and explain "
        "how to fix it. Do not write a complete new solution. End with exactly one line: "
        '"Conclusion: correct" or "Conclusion: incorrect".'
    ),
)

TEMPLATES = {t.name: t for t in (COT_V1, COT_NO_ANSWER_V1)}

_VERDICT = re.compile(r"conclusion\s*:\s*\**\s*(correct|incorrect|right|wrong)\b", re.I)


def parse_verdict(text: str) -> bool | None:
    """The critic's own verdict from its last 'Conclusion: ...' line, or None."""
    found = _VERDICT.findall(text)
    if not found:
        return None
    return found[-1].lower() in ("correct", "right")


def resolve_template(name: str, text: str | None, system: str | None) -> CritiqueTemplate:
    """The named template; with ``text`` a custom user message, with ``system`` another
    system message (either alone or both). A changed template is versioned by the hash of
    its messages, so cached critiques of the original are never reused for it."""
    if text is None and name not in TEMPLATES:
        raise ValueError(f"unknown critique template {name!r}; known: {sorted(TEMPLATES)}")
    base = TEMPLATES.get(name, COT_V1)
    if text is None and system is None:
        return base
    sys_text = base.system if system is None else system
    user = base.user if text is None else text
    digest = hashlib.sha256(f"{sys_text}\n{user}".encode()).hexdigest()[:12]
    if text is None:  # the named template's user message under another system message
        return CritiqueTemplate(base.name, f"{base.version}-system-{digest}", sys_text, user)
    return CritiqueTemplate("custom", f"custom-{digest}", sys_text, user)


def check_template_text(text: str) -> str:
    """Validate a custom user template: only {question}, {answer}, {response} fields."""
    try:
        text.format(question="q", answer="a", response="r")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"template_text cannot be filled ({exc!r}); use only {{question}}, {{answer}}, "
            "{response}, and write {{ }} for literal braces"
        ) from exc
    if "{response}" not in text:
        raise ValueError("template_text must contain {response}")
    return text
