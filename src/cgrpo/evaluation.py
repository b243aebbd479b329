"""Evaluate a policy on problems: greedy pass@1 and, with k > 1, pass@k / avg@k / maj@k.

One function serves evaluation during training (``eval.every``) and ``cgrpo eval``. The k
samples are drawn under a torch RNG of their own, seeded from ``seed``: evaluating neither
reads nor moves the training RNG, so a run trains the same whatever its evaluation does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from cgrpo.eval_metrics import summarize
from cgrpo.types import Problem, SamplingParams


@dataclass
class EvalResult:
    metrics: dict[str, float]  # eval/... keys, time/eval
    generations: list[dict[str, Any]] = field(default_factory=list)  # one per response


def evaluate_problems(
    policy: Any,
    verifier: Any,
    prompts: Any,
    problems: list[Problem],
    *,
    max_new_tokens: int,
    k: int = 1,
    temperature: float = 0.6,
    top_p: float = 0.95,
    seed: int = 0,
    device: Any = "cpu",
) -> EvalResult:
    """Greedy responses (``eval/accuracy``, ``eval/length_mean``, ``eval/truncated_share``)
    and, with ``k > 1``, k sampled responses per problem (``eval/pass@k``, ``avg@k``,
    ``maj@k``). ``generations`` holds every response with its verdict."""
    import torch

    started = time.perf_counter()
    ids = [prompts.prompt_ids(p) for p in problems]
    greedy = policy.generate(ids, SamplingParams(n=1, greedy=True, max_new_tokens=max_new_tokens))
    generations: list[dict[str, Any]] = []

    def record(problem: Problem, completion: Any, mode: str) -> Any:
        verdict = verifier.verify(completion.text, problem)
        generations.append(
            {
                "problem_id": problem.id,
                "mode": mode,
                "question": problem.question,
                "answer": problem.answer,
                "response": completion.text,
                "extracted": verdict.extracted,
                "correct": verdict.correct,
                "reward": verdict.score,
                "finish_reason": completion.finish_reason,
                "tokens": len(completion.token_ids),
            }
        )
        return verdict

    verdicts = [record(p, g[0], "greedy") for p, g in zip(problems, greedy, strict=True)]
    outs = [g[0] for g in greedy]
    metrics = {
        "eval/accuracy": sum(v.correct for v in verdicts) / len(verdicts),
        "eval/problems": float(len(verdicts)),
        "eval/length_mean": sum(len(o.token_ids) for o in outs) / len(outs),
        "eval/truncated_share": sum(o.finish_reason == "length" for o in outs) / len(outs),
    }
    if k > 1:
        params = SamplingParams(n=k, temperature=temperature, top_p=top_p,
                                max_new_tokens=max_new_tokens)  # fmt: skip
        devices = [device] if torch.device(device).type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            groups = policy.generate(ids, params)
        sampled = [
            [record(p, c, f"sample{i}") for i, c in enumerate(group)]
            for p, group in zip(problems, groups, strict=True)
        ]
        scores = summarize(
            [[v.correct for v in vs] for vs in sampled],
            [[v.extracted for v in vs] for vs in sampled],
            k,
        )
        metrics.update({f"eval/{name}": value for name, value in scores.items()})
    metrics["time/eval"] = time.perf_counter() - started
    return EvalResult(metrics, generations)
