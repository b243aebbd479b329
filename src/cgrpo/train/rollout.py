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
from typing import Any

from cgrpo.algo.mixing import TrainRow, build_group, select_refinements
from cgrpo.interfaces import Critic, PolicyBackend, Verifier
from cgrpo.model.prompts import PromptBuilder, RefinementTooLong
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
    selection: str = "correct_first"  # correct_first | random


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
    # tokens of the prompt it was sampled from: the problem's prompt, or for a refinement
    # its refinement prompt (question, previous response, critique), not the prompt it is
    # trained on; what the sampler's prefill costs
    prompt_tokens: int = 0


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


class _Done:
    """Verdicts computed already, with the interface of a pending verification."""

    def __init__(self, verdicts: list[Verdict]):
        self.verdicts = verdicts

    def done(self) -> bool:
        return True

    def result(self) -> list[Verdict]:
        return self.verdicts


def _split_ready(jobs: list[tuple[Any, Any]], wait: bool):
    """(jobs to take now, jobs still running) of (key, pending) pairs: all with ``wait``,
    else those whose pending part is done, in order."""
    flags = [wait or job.done() for _, job in jobs]
    return (
        [j for j, ready in zip(jobs, flags, strict=True) if ready],
        [j for j, ready in zip(jobs, flags, strict=True) if not ready],
    )


def _generate_stream(policy: PolicyBackend, prompts, params: SamplingParams, seeds):
    """Batches of (prompt index, completions) as the backend finishes them: its
    ``generate_stream`` where it has one, else everything in one batch."""
    stream = getattr(policy, "generate_stream", None)
    if callable(stream):
        yield from stream(prompts, params, seeds=seeds)
    else:
        yield list(enumerate(policy.generate(prompts, params, seeds=seeds)))


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
    verify_submit: Callable[[list[tuple[str, Problem]], int], Any] | None = None,
) -> Rollout:
    """Produce the mixed training rows of one step (advantages not yet set).

    ``rng_key`` seeds the random refinement fallback of each prompt together with its
    global index. With ``seed`` set, every generation gets its own seed derived from
    (seed, global prompt index[, response index]), so samples do not depend on batching or
    on how the prompts are split across processes; ``prompt_offset`` is this process's
    first global prompt index.

    The stages overlap where the parts allow it. A backend with ``generate_stream`` hands
    over the groups each generate call finishes; they are verified at once, through
    ``verify_submit(pairs, batch size)`` (the trainer's worker processes: it returns
    something with ``done()`` and ``result()``, and verifies in this process what the
    workers do not take), while the next call samples. A critic with ``critique_async``
    (the API critic) gets each group's requests as soon as the group is verified, and
    refinement prompts are built as critiques come back. The stage times are the main
    thread's time in each stage, running it or waiting for it, so work hidden behind
    sampling is not counted and the times add up to the rollout's wall time. Results do
    not depend on the overlap: everything is assembled by index, in response order.
    """
    s = settings
    secs: dict[str, float] = {}
    g = s.samples_per_prompt

    def submit(pairs: list[tuple[str, Problem]], batch: int):
        if verify_submit is not None:
            return verify_submit(pairs, batch)
        return _Done([verifier.verify(text, problem) for text, problem in pairs])

    def seeds(*keys: tuple[int, ...]) -> list[int] | None:
        return None if seed is None else [_mix(seed, *k) for k in keys]

    critiquing = s.refinements_per_prompt > 0 and critic is not None
    critique_async = getattr(critic, "critique_async", None) if critiquing else None
    initial: list[list[Completion]] = [[] for _ in problems]
    verdicts: list[list[Verdict]] = [[] for _ in problems]
    verifying: list[tuple[list[int], Any]] = []  # (prompt indices, pending verdicts)
    critiquing_now: list[tuple[list[tuple[int, int]], Any]] = []  # (targets, future)
    critique_of: dict[tuple[int, int], Critique] = {}
    ref_prompt_of: dict[tuple[int, int], list[int]] = {}
    skipped = 0

    def build_refinement(target: tuple[int, int], crit: Critique) -> None:
        nonlocal skipped
        p, i = target
        critique_of[target] = crit
        try:
            ref_prompt_of[target] = prompts.refinement_ids(
                problems[p], initial[p][i].text, crit.text
            )
        except RefinementTooLong as exc:  # skipped and counted, never a crash
            skipped += 1
            log.warning("refinement skipped: %s", exc)

    def take_critiques(wait: bool) -> None:
        nonlocal critiquing_now
        ready, critiquing_now = _split_ready(critiquing_now, wait)
        for targets, future in ready:
            with _timed(secs, "critique"):
                crits = future.result()
            with _timed(secs, "refine"):
                for target, crit in zip(targets, crits, strict=True):
                    build_refinement(target, crit)

    def take_verdicts(wait: bool) -> None:
        nonlocal verifying
        ready, verifying = _split_ready(verifying, wait)
        for groups, pending in ready:
            with _timed(secs, "verify"):
                flat = pending.result()
            at = 0
            for p in groups:
                verdicts[p] = flat[at : at + len(initial[p])]
                at += len(initial[p])
            if critique_async is not None:  # 3. this group's critiques go out now
                chosen = refinement_targets(
                    [verdicts[p] for p in groups], s.refine, s.max_refinements_generated
                )
                targets = [(groups[local], i) for local, i in chosen]
                if targets:
                    requests = [
                        CritiqueRequest(problems[p], initial[p][i].text, verdicts[p][i])
                        for p, i in targets
                    ]
                    with _timed(secs, "critique"):
                        critiquing_now.append((targets, critique_async(requests)))
        take_critiques(wait=False)

    # 1-2. G samples per prompt from the current policy, each finished batch verified
    # (and its failed groups critiqued) while the next one samples
    stream = _generate_stream(
        policy,
        prompt_ids,
        s.sampling,
        seeds(*[(0, prompt_offset + p) for p in range(len(prompt_ids))]),
    )
    while True:
        with _timed(secs, "sample"):
            batch = next(stream, None)
        if batch is None:
            break
        for p, comps in batch:
            initial[p] = comps
        groups = [p for p, _ in batch]
        pairs = [(c.text, problems[p]) for p in groups for c in initial[p]]
        with _timed(secs, "verify"):  # returns at once for the part the workers take
            verifying.append((groups, submit(pairs, len(problems) * g)))
        take_verdicts(wait=False)
    take_verdicts(wait=True)
    records = [
        Record(p, problems[p], "initial", c, v, prompt_tokens=len(prompt_ids[p]))
        for p, (comps, vs) in enumerate(zip(initial, verdicts, strict=True))
        for c, v in zip(comps, vs, strict=True)
    ]
    kept: list[list[int]] = [[] for _ in problems]  # record indices of kept refinements
    critiques: list[Critique] = []
    if critiquing:
        assert critic is not None
        targets = refinement_targets(verdicts, s.refine, s.max_refinements_generated)
        if critique_async is not None:
            take_critiques(wait=True)
        else:
            with _timed(secs, "critique"):  # 3. critique the chosen responses
                crits = critic.critique(
                    [
                        CritiqueRequest(problems[p], initial[p][i].text, verdicts[p][i])
                        for p, i in targets
                    ]
                )
            with _timed(secs, "refine"):
                for target, crit in zip(targets, crits, strict=True):
                    build_refinement(target, crit)
        critiques = [critique_of[t] for t in targets]  # response order, whatever came first
        for (p, i), crit in zip(targets, critiques, strict=True):
            records[p * g + i].critique = crit
        # 4. one refinement per critique that fits, same policy, in response order
        targets = [t for t in targets if t in ref_prompt_of]
        used = [critique_of[t] for t in targets]
        one = dataclasses.replace(s.sampling, n=1)
        ref_seeds = seeds(*[(1, prompt_offset + p, i) for p, i in targets])
        refined: list[Completion] = [None] * len(targets)  # type: ignore[list-item]
        ref_verdicts: list[Verdict] = [None] * len(targets)  # type: ignore[list-item]
        checking: list[tuple[list[int], Any]] = []
        stream = _generate_stream(policy, [ref_prompt_of[t] for t in targets], one, ref_seeds)
        while targets:
            with _timed(secs, "refine"):
                batch = next(stream, None)
            if batch is None:
                break
            for j, comps in batch:
                refined[j] = comps[0]
            js = [j for j, _ in batch]
            pairs = [(refined[j].text, problems[targets[j][0]]) for j in js]
            with _timed(secs, "verify"):
                checking.append((js, submit(pairs, len(targets))))
        with _timed(secs, "verify"):
            for js, pending in checking:
                for j, verdict in zip(js, pending.result(), strict=True):
                    ref_verdicts[j] = verdict
        by_prompt: dict[int, list[int]] = {}
        for j, (p, _) in enumerate(targets):
            by_prompt.setdefault(p, []).append(j)
        for p, js in by_prompt.items():  # 5. keep K per prompt: correct first (or at random)
            picks = select_refinements(
                [ref_verdicts[j].correct for j in js],
                s.refinements_per_prompt,
                s.fallback,
                random.Random(f"{rng_key}:{prompt_offset + p}"),  # per prompt: split-proof
                s.selection,
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
                        parent=p * g + targets[j][1],
                        prompt_tokens=len(ref_prompt_of[targets[j]]),
                    )
                )
            kept[p] = [first + k for k in picks]

    rows: list[TrainRow] = []  # 6. mix: G initial + kept refinements, all on the original prompt
    all_failed = rescued = 0
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
