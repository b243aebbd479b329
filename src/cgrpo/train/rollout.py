"""One rollout: sample, verify, critique, refine, select, mix (ALGORITHM.md section 2,
steps 1-6). The update is elsewhere; this module only produces the training rows.

Shapes: P prompts, G initial samples each, K refinements kept each, N = G + K.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cgrpo.interfaces import Critic, PolicyBackend, Verifier
from cgrpo.train.mixing import TrainRow, build_group, select_refinements
from cgrpo.train.prompts import PromptBuilder, RefinementTooLong
from cgrpo.types import Completion, Critique, CritiqueRequest, Problem, SamplingParams, Verdict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RolloutSettings:
    """The rollout part of a recipe, flattened for the loop."""

    samples_per_prompt: int  # G
    refinements_per_prompt: int  # K (0 = plain GRPO)
    refine: str  # all | failed_groups | failed_responses
    max_refinements_generated: int | None
    fallback: str  # first | random | none
    sampling: SamplingParams


@dataclass
class Record:
    """One sampled sequence, for samples.jsonl and the per-kind metrics."""

    group: int
    problem: Problem
    kind: str  # "initial" | "refinement"
    completion: Completion
    verdict: Verdict
    critique: Critique | None = None
    kept: bool = True
    row: int | None = None  # index into Rollout.rows when this sequence is trained on
    parent: int | None = None  # a refinement's: index (in records) of the response it refined


@dataclass
class Rollout:
    rows: list[TrainRow]
    records: list[Record]
    seconds: dict[str, float] = field(default_factory=dict)
    critiques: list[Critique] = field(default_factory=list)
    groups_all_failed: int = 0
    groups_rescued: int = 0
    refinements_skipped: int = 0  # critiqued, but the refinement prompt could not fit


def _timed(seconds: dict[str, float], stage: str):
    class _T:
        def __enter__(self):
            self.t = time.perf_counter()

        def __exit__(self, *exc):
            seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - self.t

    return _T()


def _mix(*parts: int) -> int:
    """A 31-bit seed from integers (tuple hashing of ints is stable across processes)."""
    return hash(parts) & 0x7FFFFFFF


def refinement_targets(
    verdicts: Sequence[Sequence[Verdict]], mode: str, cap: int | None
) -> list[tuple[int, int]]:
    """(prompt, response) pairs to critique and refine, in response order.

    ``all``: every response (released code); ``failed_groups``: every response of a prompt
    whose G responses all failed (paper); ``failed_responses``: every failed response.
    ``cap`` limits the pairs per prompt.
    """
    out = []
    for p, group in enumerate(verdicts):
        if mode == "all":
            chosen = list(range(len(group)))
        elif mode == "failed_groups":
            chosen = list(range(len(group))) if not any(v.correct for v in group) else []
        elif mode == "failed_responses":
            chosen = [i for i, v in enumerate(group) if not v.correct]
        else:
            raise ValueError(f"unknown refine mode {mode!r}")
        out += [(p, i) for i in chosen[:cap]]
    return out


def rollout(
    problems: Sequence[Problem],
    prompt_ids: Sequence[Sequence[int]],
    *,
    policy: PolicyBackend,
    verifier: Verifier,
    critic: Critic | None,
    prompts: PromptBuilder,
    settings: RolloutSettings,
    eos_ids: Sequence[int],
    rng_key: str,
    seed: int | None = None,
    prompt_offset: int = 0,
    verify_many: Callable[[list[tuple[str, Problem]]], list[Verdict]] | None = None,
) -> Rollout:
    """Produce the mixed training rows of one step (advantages not yet set).

    ``rng_key`` seeds the random refinement fallback of each prompt together with its
    global index. With ``seed`` set, every generation gets its own seed derived from
    (seed, global prompt index[, response index]), so samples do not depend on batching or
    on how the prompts are split across processes; ``prompt_offset`` is this process's
    first global prompt index. ``verify_many`` verifies a batch of (response, problem)
    pairs at once (the trainer's worker processes); by default one by one with
    ``verifier``.
    """
    s = settings
    secs: dict[str, float] = {}

    def check(pairs: list[tuple[str, Problem]]) -> list[Verdict]:
        if verify_many is not None:
            return verify_many(pairs)
        return [verifier.verify(text, problem) for text, problem in pairs]

    def seeds(*keys: tuple[int, ...]) -> list[int] | None:
        return None if seed is None else [_mix(seed, *k) for k in keys]

    with _timed(secs, "sample"):  # 1. G samples per prompt from the current policy
        initial = policy.generate(
            prompt_ids,
            s.sampling,
            seeds=seeds(*[(0, prompt_offset + p) for p in range(len(prompt_ids))]),
        )
    with _timed(secs, "verify"):  # 2. reward every sample (one batch: the pool's unit)
        pairs = zip(problems, initial, strict=True)
        flat = check([(c.text, pb) for pb, comps in pairs for c in comps])
        verdicts, at = [], 0
        for comps in initial:
            verdicts.append(flat[at : at + len(comps)])
            at += len(comps)
    records = [
        Record(p, problems[p], "initial", c, v)
        for p, (comps, vs) in enumerate(zip(initial, verdicts, strict=True))
        for c, v in zip(comps, vs, strict=True)
    ]
    kept: list[list[int]] = [[] for _ in problems]  # record indices of kept refinements
    critiques: list[Critique] = []
    skipped = 0
    if s.refinements_per_prompt > 0 and critic is not None:
        targets = refinement_targets(verdicts, s.refine, s.max_refinements_generated)
        with _timed(secs, "critique"):  # 3. critique the chosen responses
            critiques = critic.critique(
                [
                    CritiqueRequest(problems[p], initial[p][i].text, verdicts[p][i])
                    for p, i in targets
                ]
            )
        for (p, i), crit in zip(targets, critiques, strict=True):
            records[p * s.samples_per_prompt + i].critique = crit
        with _timed(secs, "refine"):  # 4. one refinement per critique, same policy
            ref_prompts, fitting = [], []
            for (p, i), c in zip(targets, critiques, strict=True):
                try:
                    ref_prompts.append(
                        prompts.refinement_ids(problems[p], initial[p][i].text, c.text)
                    )
                    fitting.append(((p, i), c))
                except RefinementTooLong as exc:  # skipped and counted, never a crash
                    skipped += 1
                    log.warning("refinement skipped: %s", exc)
            targets = [t for t, _ in fitting]
            used = [c for _, c in fitting]
            one = dataclasses.replace(s.sampling, n=1)
            ref_seeds = seeds(*[(1, prompt_offset + p, i) for p, i in targets])
            refined = (
                [c[0] for c in policy.generate(ref_prompts, one, seeds=ref_seeds)]
                if ref_prompts
                else []
            )
        with _timed(secs, "verify"):
            ref_verdicts = check(
                [(c.text, problems[p]) for (p, _), c in zip(targets, refined, strict=True)]
            )
        by_prompt: dict[int, list[int]] = {}
        for j, (p, _) in enumerate(targets):
            by_prompt.setdefault(p, []).append(j)
        for p, js in by_prompt.items():  # 5. keep K per prompt: correct first
            picks = select_refinements(
                [ref_verdicts[j].correct for j in js],
                s.refinements_per_prompt,
                s.fallback,
                random.Random(f"{rng_key}:{prompt_offset + p}"),  # per prompt: split-proof
            )  # type: ignore[arg-type]
            first = len(records)
            for local, j in enumerate(js):
                records.append(
                    Record(
                        p,
                        problems[p],
                        "refinement",
                        refined[j],
                        ref_verdicts[j],
                        used[j],
                        kept=local in picks,
                        parent=p * s.samples_per_prompt + targets[j][1],
                    )
                )
            kept[p] = [first + k for k in picks]

    rows: list[TrainRow] = []  # 6. mix: G initial + kept refinements, all on the original prompt
    all_failed = rescued = 0
    g = s.samples_per_prompt
    for p in range(len(problems)):
        failed = not any(v.correct for v in verdicts[p])
        all_failed += failed
        rescued += failed and any(records[i].verdict.correct for i in kept[p])
        members = [p * g + i for i in range(g)] + kept[p]
        for offset, idx in enumerate(members):
            records[idx].row = len(rows) + offset
        rows += build_group(
            p,
            prompt_ids[p],
            initial[p],
            [v.score for v in verdicts[p]],
            [records[i].completion for i in kept[p]],
            [records[i].verdict.score for i in kept[p]],
            eos_ids,
        )
    return Rollout(rows, records, secs, critiques, all_failed, rescued, skipped)
