"""``cgrpo critique``: try the recipe's critic on a few samples before spending GPU time.

Inputs are either lines of a run's ``samples.jsonl`` (``--samples``) or problems from the
recipe's task, each paired once with its reference solution (a response the verifier
should accept) and once with another problem's solution (one it should reject). Prints
each sample's question, response and critique with the verifier's and the critic's
verdicts, latency, tokens and cost, then totals: failed critiques by reason (empty, cut
at the token limit, refused, thinking only, request errors) and, for the API critic, its
reasoning tokens. Exits 1 when every critique failed (the critic is misconfigured: a run
would train on fallback critiques only).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from cgrpo.errors import DataError
from cgrpo.types import BUDGET_EXHAUSTED, CritiqueRequest, Problem


def _from_samples(path: Path, n: int) -> list[tuple[Problem, str]]:
    out = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if len(out) >= n:
                break
            try:
                row = json.loads(line)
                out.append(
                    (
                        Problem(
                            str(row.get("prompt_id", line_no)), row["question"], str(row["answer"])
                        ),
                        row["response"],
                    )
                )
            except (ValueError, KeyError) as exc:
                raise DataError(f"{path}:{line_no}: not a samples.jsonl line ({exc!r})") from exc
    return out


OTHER_SOLUTION = "(another problem's solution, shown as a wrong answer) "


def _from_task(problems: list[Problem], n: int) -> list[tuple[Problem, str]]:
    """Each problem with its reference solution, then with the next problem's solution as
    the wrong answer (its text starts with :data:`OTHER_SOLUTION`, stripped before the
    critic sees it)."""
    with_solution = [p for p in problems if p.solution] or problems
    out = []
    for i, prob in enumerate(with_solution[: max(1, (n + 1) // 2)]):
        other = with_solution[(i + 1) % len(with_solution)]
        out.append((prob, prob.solution or f"The answer is \\boxed{{{prob.answer}}}."))
        wrong = other.solution or f"The answer is \\boxed{{{other.answer}}}."
        out.append((prob, OTHER_SOLUTION + wrong))
    return out[:n]


def run_critique(recipe_path: str, overrides: list[str], samples: str | None, n: int) -> int:
    from rich.console import Console

    from cgrpo.config import load_recipe
    from cgrpo.interfaces import BuildContext
    from cgrpo.plugins import get_registries

    regs = get_registries()
    recipe, _ = load_recipe(recipe_path, overrides, registries=regs)
    console = Console()
    comp = regs["critic"].get(recipe.critic.name)
    ctx = BuildContext(seed=recipe.run.seed, recipe=recipe)
    if getattr(comp.factory, "needs_policy", False):
        from cgrpo.app.build import build

        built = build(recipe, regs, None)
        critic, verifier, problems = built.critic, built.verifier, built.problems
    else:
        critic = regs["critic"].build(recipe.critic.name, recipe.critic.options, ctx)
        verifier = regs["verifier"].build(recipe.verifier.name, recipe.verifier.options, ctx)
        task = regs["task"].build(recipe.data.task.name, recipe.data.task.options, ctx)
        problems = [] if samples else task.load()
    pairs = _from_samples(Path(samples), n) if samples else _from_task(problems, n)
    shown = [r for _, r in pairs]
    pairs = [(p, r.removeprefix(OTHER_SOLUTION)) for p, r in pairs]
    requests = [CritiqueRequest(p, r, verifier.verify(r, p)) for p, r in pairs]
    started = time.perf_counter()
    critiques = critic.critique(requests)
    wall = time.perf_counter() - started

    if not samples:
        what = "with its reference solution and with another problem's solution as a wrong answer"
        console.print(f"no --samples: each problem is critiqued {what}", markup=False)
    for i, (req, c, text) in enumerate(zip(requests, critiques, shown, strict=True), 1):
        _show(console, i, len(requests), req, c, text)
    agree = [
        c.critic_verdict == r.verdict.correct
        for r, c in zip(requests, critiques, strict=True)
        if c.critic_verdict is not None
    ]
    failed = [c for c in critiques if c.fallback and c.error != BUDGET_EXHAUSTED]
    summary: dict[str, Any] = {
        "wall_s": round(wall, 2),
        "cost_usd": round(sum(c.cost for c in critiques), 6),
        "cached": sum(c.cached for c in critiques),
        "failed": len(failed),
        "budget_fallbacks": sum(c.error == BUDGET_EXHAUSTED for c in critiques),
        "verdict_agreement": f"{sum(agree)}/{len(agree)}" if agree else "no verdict lines",
    }
    console.print("totals: " + "  ".join(f"{k} {v}" for k, v in summary.items()), markup=False)
    _warn_of_empty(critiques, recipe.critic.name)
    for line in _details(failed, getattr(critic, "telemetry", None)):
        console.print(line, markup=False)
    close = getattr(critic, "close", None)
    if callable(close):
        close()
    if critiques and len(failed) == len(critiques):
        print(
            f"cgrpo critique: every critique failed (first: {failed[0].error}); a run would "
            "train on ground-truth fallback critiques only. Check the critic's settings.",
            file=sys.stderr,
        )
        return 1
    return 0


def _warn_of_empty(critiques: list[Any], critic: str) -> None:
    """An empty critique (the self critic on a small or cold model writes nothing) would
    have a run refine from the refinement template alone: say so."""
    empty = sum(not c.text.strip() for c in critiques)
    if empty:
        print(f"cgrpo critique: warning: {empty} of {len(critiques)} critiques are empty "
              f"(critic {critic}); a run would refine from the template alone. Check the "
              "critic's max_tokens and prompt, or warm the model up first",
              file=sys.stderr)  # fmt: skip


def _details(failed: list[Any], telemetry: Any) -> list[str]:
    """Why critiques failed, by kind, and what the API critic saw of the reasoning."""
    from collections import Counter

    from cgrpo.builtins.critics.replies import failure_kind

    lines = []
    if failed:
        kinds = Counter(failure_kind(c.error or "") for c in failed)
        lines.append("failed by reason: " + "  ".join(f"{k} {n}" for k, n in kinds.items()))
    totals = telemetry() if callable(telemetry) else {}
    if "reasoning_tokens_total" in totals:
        lines.append(  # reasoning tokens are billed as completion tokens
            f"reasoning_tokens {totals['reasoning_tokens_total']:.0f}  think_stripped "
            f"{totals['think_stripped_total']:.0f}  separate_reasoning "
            f"{totals['separate_reasoning_total']:.0f}"
        )
    return lines


def _show(console: Any, i: int, total: int, req: CritiqueRequest, c: Any, shown: str) -> None:
    """One sample as a block that reads at 80 columns: a header line with the verdicts
    and costs, then the question, the response and the critique, each wrapped."""
    from rich.rule import Rule
    from rich.text import Text

    source = "cache" if c.cached else c.critic
    if c.fallback:
        source = f"fallback ({c.error})"
    critic_says = {None: "-", True: "correct", False: "incorrect"}[c.critic_verdict]
    console.print(Rule(f"{i}/{total}", align="left"))
    console.print(
        Text(
            f"verifier {'correct' if req.verdict.correct else 'incorrect'} · critic "
            f"{critic_says} · {source} · {c.latency_s:.2f}s · "
            f"{c.prompt_tokens}+{c.completion_tokens} tokens · ${c.cost:.5f}"
        )
    )
    for label, text in (
        ("question", f"{req.problem.question}  (reference answer: {req.problem.answer})"),
        ("response", shown),
        ("critique", c.text or "(empty)"),
    ):
        line = Text(f"{label}: ", style="bold")
        line.append(_clip(text))
        console.print(line)


def _clip(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
