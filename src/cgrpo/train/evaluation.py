"""Evaluate a policy on evaluation sets: greedy pass@1 and, with k > 1, pass@k / avg@k /
maj@k, per set and macro-averaged.

One function serves evaluation during training (``eval.every``) and ``cgrpo eval``. All
sets' greedy responses are generated in one batch, and the sampled ones in one batch per
sampling setting, so that nine small benchmarks keep the sampler as busy as one big one.
The k samples are drawn under a torch RNG of their own, seeded from ``seed``: evaluating
neither reads nor moves the training RNG, so a run trains the same whatever its
evaluation does. Responses are verified in worker processes when the verifier opts in
(:mod:`cgrpo.train.verify_pool`).

Metric names: a set named ``""`` (the recipe's eval task) writes ``eval/<metric>``; a
benchmark writes ``eval/<name>/<metric>``; with benchmarks, ``eval/avg/<metric>`` and
``eval/avg_math/<metric>`` are the macro averages of ``score`` and ``accuracy`` over all
and over the math benchmarks. ``score`` is what the paper's table reports: avg@k where the
benchmark is reported over k samples (AIME, AMC), greedy accuracy otherwise; ``eval.k``
(``--k``) on a greedy benchmark adds pass@k, avg@k and maj@k and leaves its score greedy.
A benchmark whose rows name their source (the ``verl`` preset's ``data_source``) is one
set per source (:func:`source_sets`: ``eval/<name>/<source>/<metric>``), and
``eval/<name>/score`` and ``.../accuracy`` are their macro average; a source whose problems
repeat r times is reported over its r samples (avg@r).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cgrpo.algo.eval_metrics import summarize
from cgrpo.train.verify_pool import VerifyPool
from cgrpo.types import Problem, SamplingParams


@dataclass
class EvalSet:
    """One benchmark (or the recipe's evaluation task), ready to evaluate."""

    name: str  # "" = the recipe's eval task (metrics eval/<metric>)
    problems: list[Problem]
    verifier: Any
    verifier_spec: tuple[str, dict[str, Any]] | None = None  # to rebuild it in a worker
    k: int = 1
    temperature: float = 0.6
    top_p: float = 0.95
    category: str = "math"
    description: dict[str, Any] = field(default_factory=dict)
    # a mixture source's own verifier for its problems: label -> (verifier, spec)
    routes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    group: str = ""  # the benchmark a per-source set belongs to (its macro average)
    # the benchmark's own k (None: k): a benchmark reported greedily keeps greedy accuracy
    # as its score when eval.k (--k) adds samples
    own_k: int | None = None

    def key(self, metric: str) -> str:
        return f"eval/{self.name}/{metric}" if self.name else f"eval/{metric}"

    @property
    def score_metric(self) -> str:
        """What ``score`` is for this set: ``avg@k`` for a set reported over k samples
        (AIME, AMC), greedy ``accuracy`` otherwise, whatever k samples were added."""
        sampled = (self.own_k if self.own_k is not None else self.k) > 1
        return f"avg@{self.k}" if sampled and self.k > 1 else "accuracy"


@dataclass
class EvalResult:
    metrics: dict[str, float]  # eval/... keys, time/eval, time/eval_verify
    generations: list[dict[str, Any]] = field(default_factory=list)  # one per response


def evaluate_sets(
    policy: Any,
    prompts: Any,
    sets: list[EvalSet],
    *,
    max_new_tokens: int,
    seed: int = 0,
    device: Any = "cpu",
    pool: VerifyPool | None = None,
    say: Callable[[str], None] | None = None,
) -> EvalResult:
    """Every set's greedy responses (``accuracy``, ``length_mean``, ``truncated_share``)
    and, for sets with ``k > 1``, k sampled responses per problem (``pass@k``, ``avg@k``,
    ``maj@k``). ``generations`` holds every response with its verdict. ``say`` receives a
    line per phase (``cgrpo eval`` prints them: a large evaluation takes minutes)."""
    import torch

    started = time.perf_counter()
    pool = pool or VerifyPool(1)
    say = say or (lambda line: None)
    ids = [[prompts.prompt_ids(p) for p in s.problems] for s in sets]
    named = "set" if len(sets) == 1 else "sets"
    say(f"greedy responses to {sum(map(len, ids))} problems ({len(sets)} {named})")
    greedy = _generate_flat(
        policy, ids, SamplingParams(n=1, greedy=True, max_new_tokens=max_new_tokens)
    )
    sampled: list[list[list[Any]] | None] = [None] * len(sets)
    settings = sorted({(s.k, s.temperature, s.top_p) for s in sets if s.k > 1})
    for index, (k, temperature, top_p) in enumerate(settings):
        members = [
            i
            for i, s in enumerate(sets)
            if (s.k, s.temperature, s.top_p) == (k, temperature, top_p)
        ]
        params = SamplingParams(n=k, temperature=temperature, top_p=top_p,
                                max_new_tokens=max_new_tokens)  # fmt: skip
        devices = [device] if torch.device(device).type == "cuda" else []
        count = sum(len(ids[i]) for i in members)
        say(f"{k} samples at T={temperature}, top-p {top_p} for {count} problems")
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed + index)
            groups = _generate_flat(policy, [ids[i] for i in members], params)
        for i, g in zip(members, groups, strict=True):
            sampled[i] = g

    verify_started = time.perf_counter()
    say("verifying" + (f" (up to {pool.workers} worker processes)" if pool.workers > 1 else ""))
    metrics: dict[str, float] = {}
    generations: list[dict[str, Any]] = []
    for s, outs, samples in zip(sets, greedy, sampled, strict=True):
        completions = [(p, g[0], "greedy") for p, g in zip(s.problems, outs, strict=True)]
        for p, group in zip(s.problems, samples or [], strict=False):
            completions += [(p, c, f"sample{i}") for i, c in enumerate(group)]
        verdicts = pool.verify_routed(
            (s.verifier, s.verifier_spec), s.routes, [(c.text, p) for p, c, _ in completions]
        )
        for (p, c, mode), v in zip(completions, verdicts, strict=True):
            generations.append(_generation(s.name, p, c, mode, v))
        metrics.update(_set_metrics(s, [g[0] for g in outs], verdicts, samples))
    metrics.update(macro_averages(sets, metrics))
    now = time.perf_counter()
    metrics["time/eval"] = now - started
    metrics["time/eval_verify"] = now - verify_started
    return EvalResult(metrics, generations)


def evaluate_now(built: Any, recipe: Any, pool: VerifyPool, step: int) -> dict[str, float]:
    """The policy as it is now on the run's evaluation sets (``built.eval_sets``), during
    RL or the warm-up: rank 0 generates and every rank receives the metrics (collective
    under torchrun: every rank calls it; a sharded model is gathered on each). ``step``
    seeds the k samples."""
    from cgrpo.model import distributed
    from cgrpo.model.sharding import sampling_weights

    result: dict[str, float] = {}
    with sampling_weights(built.policy, built.model):
        if distributed.is_main() and built.eval_sets:
            result = evaluate_sets(
                built.policy,
                built.prompts,
                built.eval_sets,
                max_new_tokens=recipe.sampling.max_new_tokens,
                seed=recipe.run.seed * 1_000_003 + step,
                device=built.device,
                pool=pool,
            ).metrics
    return distributed.broadcast(result)


def _generate_flat(policy: Any, ids: list[list[list[int]]], params: SamplingParams):
    """One ``generate`` call for every set's prompts, split back per set."""
    flat = [p for per_set in ids for p in per_set]
    out = policy.generate(flat, params) if flat else []
    split, at = [], 0
    for per_set in ids:
        split.append(out[at : at + len(per_set)])
        at += len(per_set)
    return split


def _generation(name: str, p: Problem, c: Any, mode: str, v: Any) -> dict[str, Any]:
    return {
        **({"benchmark": name} if name else {}),
        "problem_id": p.id,
        "mode": mode,
        "question": p.question,
        "answer": p.answer,
        "response": c.text,
        "extracted": v.extracted,
        "correct": v.correct,
        "reward": v.score,
        "reason": v.reason,
        "finish_reason": c.finish_reason,
        "tokens": len(c.token_ids),
    }


def _set_metrics(s: EvalSet, outs: list[Any], verdicts: list[Any], samples) -> dict[str, float]:
    n = len(outs)
    greedy, rest = verdicts[:n], verdicts[n:]
    accuracy = sum(v.correct for v in greedy) / n
    out = {
        s.key("accuracy"): accuracy,
        s.key("problems"): float(n),
        s.key("length_mean"): sum(len(o.token_ids) for o in outs) / n,
        s.key("truncated_share"): sum(o.finish_reason == "length" for o in outs) / n,
    }
    if samples is not None:
        per_problem = [rest[i * s.k : (i + 1) * s.k] for i in range(n)]
        scores = summarize(
            [[v.correct for v in vs] for vs in per_problem],
            [[v.extracted for v in vs] for vs in per_problem],
            s.k,
        )
        out.update({s.key(name): value for name, value in scores.items()})
    out[s.key("score")] = out[s.key(s.score_metric)]
    return out


def source_sets(s: EvalSet, sample_repeats: bool = True) -> list[EvalSet]:
    """``s`` as one set per source of its problems (``metadata["task"]``, which a
    benchmark's ``source_field`` sets), in order of first appearance, named
    ``<name>/<source>``; ``s`` as one set when its problems name no source. A problem read
    from r repeated rows (``metadata["repeats"]``, the same r for a whole source) is sampled
    r times: avg@r, the mean over the repeated rows of a sampled validation (verl's
    mean@r); a set that samples k > 1 anyway keeps its k, and ``sample_repeats=False``
    (eval.k: 1, greedy only) samples nothing."""
    by_source: dict[Any, list[Problem]] = {}
    for p in s.problems:
        by_source.setdefault(p.metadata.get("task"), []).append(p)

    def samples(problems: list[Problem]) -> int:
        return s.k if s.k > 1 or not sample_repeats else _repeats(problems)

    def own_k(problems: list[Problem]) -> int | None:
        """A repeated source is reported over its repeats, as the paper's table does."""
        return _repeats(problems) if _repeats(problems) > 1 and sample_repeats else s.own_k

    if None in by_source:
        return [dataclasses.replace(s, k=samples(s.problems), own_k=own_k(s.problems))]
    return [
        dataclasses.replace(
            s,
            name=f"{s.name}/{source}",
            problems=problems,
            k=samples(problems),
            own_k=own_k(problems),
            group=s.name,
            description={**s.description, "source": source, "repeats": _repeats(problems)},
        )
        for source, problems in by_source.items()
    ]


def _repeats(problems: list[Problem]) -> int:
    return problems[0].metadata.get("repeats", 1)


def macro_averages(sets: list[EvalSet], metrics: dict[str, float]) -> dict[str, float]:
    """``eval/avg/{score,accuracy}`` over the named sets, ``eval/avg_math/...`` over the
    math ones, ``eval/<benchmark>/...`` over a benchmark's per-source sets (nothing when no
    set is named: the eval task's numbers are the only ones)."""
    named = [s for s in sets if s.name]
    out: dict[str, float] = {}
    math = [s for s in named if s.category == "math"]
    groups = {s.group: [t for t in named if t.group == s.group] for s in named if s.group}
    for label, members in (("avg", named), ("avg_math", math), *groups.items()):
        if members:
            for metric in ("score", "accuracy"):
                values = [metrics[s.key(metric)] for s in members]
                out[f"eval/{label}/{metric}"] = sum(values) / len(values)
    return out
