"""One rollout: sample, verify, critique, refine, select, mix (ALGORITHM.md section 2,
steps 1-6). The update is elsewhere; this module only produces the training rows.

With ``algorithm.demonstrations`` a group's rows are its initial samples, its kept
refinements and its demonstrations (the reference solution, LUFFY), in that order.

Shapes: P prompts, G initial samples each, K refinements kept each, N = G + K.

Each group is one coroutine (:class:`GroupRun`) that tells its own story: sample its G
responses, verify each as it finishes, critique the ones the recipe's rule chooses, build
their refinement prompts, sample and verify the refinements, select K and mix. All groups of
a step run at once on one event loop and the step ends when every group has its rows, so a
failed group's refinement is sampled while other groups still decode their long responses
(continuous batching in the sampler), and its critique is in flight meanwhile.
Results do not depend on the timing: everything is assembled by index, in response order,
and every generation has its seed from (seed, prompt[, response]). Where the sampler's
numbers depend on its batches (``hf``, batch-only plugins), the groups go through each stage
together and the sampler gets the serial rollout's batches exactly
(:class:`cgrpo.train.gates.LockStep`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cgrpo.algo.mixing import TrainRow, build_group, select_refinements
from cgrpo.algo.targets import group_targets, possible_target, sure_target
from cgrpo.interfaces import Critic, PolicyBackend, Verifier
from cgrpo.model.prompts import PromptBuilder, RefinementTooLong
from cgrpo.train import demonstrations
from cgrpo.train.rollout_context import StepContext
from cgrpo.train.timeline import Span, stage_seconds
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
    speculative: bool = False  # rollout.speculative_refinement (failed_groups only)
    selection: str = "correct_first"  # correct_first | random
    demonstrations: int = 0  # D: copies of the reference solution per group (LUFFY)
    demonstrations_when: str = "always"  # always | failed_groups
    sample_refinements: bool = True  # False: critiques only (critique_ft trains on them)


@dataclass
class Record:
    """One sampled sequence, for samples.jsonl and the per-kind metrics."""

    group: int
    problem: Problem
    kind: str  # "initial" | "refinement" | "demonstration"
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
    timeline: list[Span] = field(default_factory=list)  # per group and stage (timeline.py)
    # rollout.speculative_refinement's work: started, cancelled_sequences, wasted_critiques
    speculative: dict[str, float] = field(default_factory=dict)


def refinement_targets(
    verdicts: Sequence[Sequence[Verdict]], mode: str, cap: int | None
) -> list[tuple[int, int]]:
    """(prompt, response) pairs to critique and refine, in response order
    (:func:`cgrpo.algo.targets.group_targets` for every prompt)."""
    return [
        (p, i)
        for p, group in enumerate(verdicts)
        for i in group_targets([v.correct for v in group], mode, cap)
    ]


@dataclass
class Refined:
    """What became of one target: its critique, refinement prompt (None: too long) and
    refinement with its verdict; ``asked``/``sampling`` say how far it got (its cost)."""

    critique: Critique | None = None
    prompt: list[int] | None = None
    completion: Completion | None = None
    verdict: Verdict | None = None
    asked: bool = False  # the critic was asked
    sampling: bool = False  # the refinement was submitted to the sampler
    spans: list[Span] = field(default_factory=list)


class GroupRun:
    """One group's rollout, in the order of the algorithm; :meth:`run` is the story."""

    def __init__(self, ctx: StepContext, p: int):
        g = ctx.settings.samples_per_prompt
        self.ctx, self.p = ctx, p
        self.problem = ctx.problems[p]
        self.responses: list[Completion | None] = [None] * g
        self.verdicts: list[Verdict | None] = [None] * g
        self.early: dict[int, asyncio.Task] = {}  # refinements started before settling
        self.refined: dict[int, Refined] = {}
        self.targets: list[int] = []
        self.picks: list[int] = []  # kept refinements: indices into self.kept_candidates()
        self.demonstrations: list[tuple[Completion, Verdict]] = []

    async def run(self) -> GroupRun:
        try:
            await self.ctx.gates.reach("sample", self.p)
            await self.sample_and_verify()  # 1-2, starting refinements early where allowed
            self.settle()  # 3-4: the recipe's rule on the whole group
            await self.refine()  # 3-5: critique, refinement prompt, refinement, verdict
            self.select()  # 5: keep K, correct ones first
            await self.demonstrate()  # the reference solution joins the group (LUFFY)
            return self
        finally:  # failed or cancelled: nothing of this group goes on sampling
            await _cancelled(list(self.early.values()))

    # 1-2 -----------------------------------------------------------------------------------
    async def sample_and_verify(self) -> None:
        checks: list[asyncio.Task] = []
        try:
            with self.ctx.clock.span(self.p, "sample"):
                async for j, completion in self.ctx.responses(self.p):
                    self.responses[j] = completion
                    checks.append(asyncio.ensure_future(self.check(j)))
            await asyncio.gather(*checks)
        finally:  # a failed check or sample: the others start no refinement
            await _cancelled(checks)

    async def check(self, j: int) -> None:
        with self.ctx.clock.span(self.p, "verify"):
            self.verdicts[j] = await self.ctx.verdict(self.responses[j].text, self.problem)
        if self.ctx.critic is not None and self.ctx.early:
            self.start_early()

    def known(self) -> list[bool | None]:
        return [None if v is None else v.correct for v in self.verdicts]

    def start_early(self) -> None:
        """Start the refinements that are sure to be wanted (or, speculating, that may be);
        with ``failed_groups``, a correct response cancels the speculation at once."""
        s, known = self.ctx.settings, self.known()
        cap, spec = s.max_refinements_generated, s.speculative
        if spec and s.refine == "failed_groups" and True in known:
            self.cancel([i for i in self.early])
            return
        for i, ok in enumerate(known):
            if ok is None or i in self.early:
                continue
            if sure_target(known, i, s.refine, cap) or (
                spec and possible_target(known, i, s.refine, cap)
            ):
                self.refined[i] = Refined()
                self.early[i] = asyncio.ensure_future(self.refine_one(i, self.refined[i]))
                self.ctx.counts["started"] += spec and s.refine == "failed_groups"

    # 3-5 -----------------------------------------------------------------------------------
    def settle(self) -> None:
        s = self.ctx.settings
        if self.ctx.critic is not None:
            correct = [v.correct for v in self.verdicts]
            self.targets = group_targets(correct, s.refine, s.max_refinements_generated)
        self.cancel([i for i in self.early if i not in self.targets])

    def cancel(self, indices: list[int]) -> None:
        """Drop speculative refinements: their sequences are cancelled (or thrown away when
        done), their critiques are finished by the critic and paid once, never used."""
        for i in indices:
            task, state = self.early.pop(i), self.refined.pop(i)
            task.cancel()
            if task.done() and not task.cancelled() and task.exception() is not None:
                # the rule without speculation would never have asked: not the step's error
                log.warning(
                    "speculative refinement of group %d, response %d, failed before its "
                    "group passed (discarded): %s", self.p, i, task.exception()
                )  # fmt: skip
            self.ctx.counts["wasted_critiques"] += state.asked
            self.ctx.counts["cancelled_sequences"] += state.sampling
            for span in state.spans:
                span.wasted = True

    async def refine(self) -> None:
        rest = [i for i in self.targets if i not in self.early]
        for i in rest:
            self.refined[i] = Refined()
        early = [self.early[i] for i in self.targets if i in self.early]
        await asyncio.gather(*early, self.refine_together(rest))

    async def refine_together(self, targets: list[int]) -> None:
        """The targets not started early, as one batch: one critique call, then every
        refinement submitted at once (the gates keep lock-step runs in the serial order)."""
        if not targets:
            return
        if self.ctx.critic.batched:  # in lock step, one critique call for the whole step
            await self.ctx.gates.reach("critique", self.p)
        await self.critique(targets)
        await self.ctx.gates.reach("refine", self.p)
        await asyncio.gather(*(self.sample_refinement(i, self.refined[i]) for i in targets))

    async def refine_one(self, i: int, state: Refined) -> None:
        """One target started early: its critique, then its refinement."""
        await self.critique([i])
        await self.sample_refinement(i, state)

    async def critique(self, targets: list[int]) -> None:
        """Critique ``targets`` in one request list and build their refinement prompts."""
        requests = [
            CritiqueRequest(self.problem, self.responses[i].text, self.verdicts[i]) for i in targets
        ]
        states = [self.refined[i] for i in targets]
        for state in states:
            state.asked = True
        with self.ctx.clock.span(self.p, "critique") as span:
            for state in states:
                state.spans.append(span)
            critiques = await self.ctx.critic.critique(requests)
        for i, state, crit in zip(targets, states, critiques, strict=True):
            state.critique = crit
            try:
                state.prompt = self.ctx.prompts.refinement_ids(
                    self.problem, self.responses[i].text, crit.text
                )
            except RefinementTooLong as exc:  # skipped and counted, never a crash
                log.warning("refinement skipped: %s", exc)

    async def sample_refinement(self, i: int, state: Refined) -> None:
        if state.prompt is None or not self.ctx.settings.sample_refinements:
            return
        state.sampling = True
        with self.ctx.clock.span(self.p, "refine") as span:
            state.spans.append(span)
            state.completion = await self.ctx.refinement(self.p, i, state.prompt)
        with self.ctx.clock.span(self.p, "verify_refinement") as span:
            state.spans.append(span)
            state.verdict = await self.ctx.verdict(state.completion.text, self.problem)

    # 5 -------------------------------------------------------------------------------------
    def kept_candidates(self) -> list[int]:
        """Targets whose refinement exists (its prompt fitted), in response order."""
        return [i for i in self.targets if self.refined[i].completion is not None]

    def select(self) -> None:
        candidates = self.kept_candidates()
        if not candidates:
            return
        s = self.ctx.settings
        self.picks = select_refinements(
            [self.refined[i].verdict.correct for i in candidates],
            s.refinements_per_prompt,
            s.fallback,  # type: ignore[arg-type]
            random.Random(f"{self.ctx.rng_key}:{self.ctx.prompt_offset + self.p}"),  # split-proof
            s.selection,  # type: ignore[arg-type]
        )

    async def demonstrate(self) -> None:
        """The group's demonstrations (:mod:`cgrpo.train.demonstrations`), verified like
        any member."""
        s = self.ctx.settings
        copies = demonstrations.wanted(
            s.demonstrations, s.demonstrations_when, self.problem, self.verdicts
        )
        if not copies:
            return
        tok = self.ctx.prompts.tok
        completion = demonstrations.completion_of(
            tok, self.problem.solution, s.sampling.max_new_tokens
        )
        with self.ctx.clock.span(self.p, "verify"):
            verdict = await self.ctx.verdict(completion.text, self.problem)
        self.demonstrations = [(completion, verdict)] * copies


async def _cancelled(tasks: list[asyncio.Task]) -> None:
    """Cancel ``tasks`` (those done are left as they are) and wait until they are."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _run_group(ctx: StepContext, p: int) -> GroupRun:
    group = GroupRun(ctx, p)
    try:
        return await group.run()
    finally:
        ctx.gates.leave()


async def _run_groups(ctx: StepContext) -> list[GroupRun]:
    """Every group of the step, concurrently. When one fails (or the step is cancelled)
    the others are cancelled and awaited before the error goes on: no request of a dead
    step keeps the sampler busy, whatever loop the rollout runs on."""
    tasks = [asyncio.ensure_future(_run_group(ctx, p)) for p in range(len(ctx.problems))]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        await _cancelled(tasks)


def assemble(groups: list[GroupRun], prompt_ids, eos_ids) -> Rollout:
    """6. Records and rows in the serial rollout's order: every initial response (group by
    group), then each group's refinements; rows are each group's G initial responses and
    its kept refinements, all on the original prompt."""
    g = len(groups[0].responses) if groups else 0
    records = [
        Record(run.p, run.problem, "initial", c, v, prompt_tokens=len(prompt_ids[run.p]))
        for run in groups
        for c, v in zip(run.responses, run.verdicts, strict=True)
    ]
    out = Rollout(rows=[], records=records)
    for run in groups:
        for i in run.targets:
            records[run.p * g + i].critique = run.refined[i].critique
            out.critiques.append(run.refined[i].critique)
        out.refinements_skipped += sum(run.refined[i].prompt is None for i in run.targets)
        kept = _refinement_records(run, records, g)
        demos = _demonstration_records(run, records, prompt_ids[run.p])
        failed = not any(v.correct for v in run.verdicts)
        out.groups_all_failed += failed
        out.groups_rescued += failed and any(records[k].verdict.correct for k in kept)
        members = [run.p * g + i for i in range(g)] + kept + demos
        for offset, index in enumerate(members):
            records[index].row = len(out.rows) + offset
        out.rows += build_group(
            run.p,
            prompt_ids[run.p],
            run.responses,
            [v.score for v in run.verdicts],
            [records[k].completion for k in kept],
            [records[k].verdict.score for k in kept],
            eos_ids,
            [records[k].completion for k in demos],
            [records[k].verdict.score for k in demos],
        )
    return out


def _demonstration_records(run: GroupRun, records: list[Record], prompt_ids) -> list[int]:
    """Append ``run``'s demonstration records (kind ``demonstration``, trained as they
    are); their record indices."""
    first = len(records)
    for completion, verdict in run.demonstrations:
        records.append(
            Record(run.p, run.problem, "demonstration", completion, verdict,
                   prompt_tokens=len(prompt_ids))
        )  # fmt: skip
    return list(range(first, len(records)))


def _refinement_records(run: GroupRun, records: list[Record], g: int) -> list[int]:
    """Append ``run``'s refinement records; the record indices of its kept ones, in the
    order selection kept them."""
    first = len(records)
    for local, i in enumerate(run.kept_candidates()):
        state = run.refined[i]
        records.append(
            Record(
                run.p,
                run.problem,
                "refinement",
                state.completion,
                state.verdict,
                state.critique,
                kept=local in run.picks,
                parent=run.p * g + i,
                prompt_tokens=len(state.prompt),
            )
        )
    return [first + k for k in run.picks]


async def rollout_async(
    problems: Sequence[Problem],
    prompt_ids: Sequence[Sequence[int]],
    *,
    policy: PolicyBackend | Any,
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
    """Produce the mixed training rows of one step (advantages not yet set), on the
    running event loop (:func:`rollout` runs it on a loop of its own).

    ``policy`` is an :class:`~cgrpo.interfaces.AsyncPolicyBackend` or a batch backend
    (adapted by :func:`cgrpo.builtins.policies.batching.as_async`). ``rng_key`` seeds the
    random refinement fallback of each prompt together with its global index. With
    ``seed`` set, every generation gets its own seed derived from (seed, global prompt
    index[, response index]), so samples do not depend on batching or on how the prompts
    are split across processes; ``prompt_offset`` is this process's first global prompt
    index. ``verify_submit(pairs, batch size)`` starts verifying in the trainer's worker
    processes and returns the pending verdicts (the pool's, or a concurrent future).

    ``seconds`` holds the rollout's wall time (``rollout``) and, per stage, the wall time
    during which it was the earliest stage some group was in (:func:`stage_seconds`), so
    work hidden behind sampling costs nothing and the stages add up to the wall time.
    ``timeline`` has every group's stage spans.
    """
    ctx = StepContext.build(
        problems,
        prompt_ids,
        policy=policy,
        verifier=verifier,
        critic=critic,
        prompts=prompts,
        settings=settings,
        rng_key=rng_key,
        seed=seed,
        prompt_offset=prompt_offset,
        verify_submit=verify_submit,
    )
    out = assemble(await _run_groups(ctx), prompt_ids, eos_ids)
    wall = ctx.clock.now()
    out.timeline = sorted(ctx.clock.spans, key=lambda s: (s.group, s.start))
    out.seconds = stage_seconds(out.timeline, wall)
    if settings.speculative:
        kinds = ("started", "cancelled_sequences", "wasted_critiques")
        out.speculative = {k: float(ctx.counts[k]) for k in kinds}
    return out


def rollout(*args: Any, **kwargs: Any) -> Rollout:
    """:func:`rollout_async` (same arguments) run to the end on an event loop of its own:
    the trainer's synchronous step."""
    return asyncio.run(rollout_async(*args, **kwargs))
