"""What every group coroutine of one step shares: the problems and settings, the seeds, the
sampler, the verifier and critic fronts, the lock-step gates and the clock.

Stage concurrency comes from the parts themselves: the sampler batches the requests it
holds (vLLM's engine continuously, the hf scheduler per generate call), the verification
pool's worker processes verify what is submitted together, and the critic runs its own
concurrency (the API critic) or one batched pass (the ``self`` and ``local`` critics).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cgrpo.errors import TrainingError
from cgrpo.interfaces import AsyncPolicyBackend, Critic, Verifier
from cgrpo.model.prompts import PromptBuilder
from cgrpo.train.gates import LockStep, TickGather
from cgrpo.train.timeline import Clock
from cgrpo.types import Completion, Critique, CritiqueRequest, Problem, SamplingParams, Verdict


def mix_seed(*parts: int) -> int:
    """A 31-bit seed from integers (tuple hashing of ints is stable across processes)."""
    return hash(parts) & 0x7FFFFFFF


async def verdicts_of(pending: Any) -> list[Verdict]:
    """The verdicts of what ``verify_submit`` returned, awaited without blocking the loop:
    a concurrent future of them, or the pool's pending verdicts (their worker futures)."""
    if isinstance(pending, concurrent.futures.Future):
        return list(await asyncio.wrap_future(pending))
    futures = getattr(pending, "futures", None)
    if callable(futures):
        await asyncio.gather(*(asyncio.wrap_future(f) for f in futures()), return_exceptions=True)
    return list(pending.result())  # a failed worker: verified here (PendingVerdicts.result)


class CriticFront:
    """One front for every critic. ``critique_async`` (the API critic) takes each group's
    requests at once and runs them under its own concurrency; a critic without it gets, in
    one ``critique`` call, the requests of every group that asked during the same turn of
    the loop. A caller cancelled meanwhile never cancels a request: it is finished, paid
    for once and its critique dropped (counted by the rollout)."""

    def __init__(self, critic: Critic):
        self.critic = critic
        call = getattr(critic, "critique_async", None)
        self.async_call = call if callable(call) else None
        self.gathered = TickGather(critic.critique)

    @property
    def batched(self) -> bool:
        """Whether the critic answers a batch in one call (its output may then depend on
        what else is in the call: the ``self`` critic samples with the policy)."""
        return self.async_call is None

    async def critique(self, requests: list[CritiqueRequest]) -> list[Critique]:
        if self.async_call is not None:
            future = asyncio.wrap_future(self.async_call(requests))
            return list(await asyncio.shield(future))
        return await self.gathered.submit(requests)


def _verify_flush(verifier: Verifier, verify_submit: Callable | None, batch: int):
    def flush(pairs: list[tuple[str, Problem]]):
        if verify_submit is None:
            return [verifier.verify(text, problem) for text, problem in pairs]
        return verdicts_of(verify_submit(pairs, batch))

    return flush


def check_speculation(policy: Any) -> None:
    """``rollout.speculative_refinement`` needs a sampler that hands over each response as
    it finishes and lets groups run on their own; refuse it otherwise (it would do
    nothing, or only waste)."""
    from cgrpo.builtins.policies.batching import as_async

    sampler = as_async(policy)
    if not getattr(sampler, "batches_continuously", True) or not callable(
        getattr(sampler, "sample_each", None)
    ):
        raise TrainingError(
            f"rollout.speculative_refinement needs a policy backend that hands over each "
            f"response as it finishes (sample_each) and batches continuously; "
            f"{type(policy).__name__} does not. Remove it, or use policy: vllm or vllm-server"
        )


@dataclass
class StepContext:
    """The shared part of one step's rollout (see the module docstring)."""

    problems: Sequence[Problem]
    prompt_ids: Sequence[Sequence[int]]
    sampler: AsyncPolicyBackend
    settings: Any  # cgrpo.train.rollout.RolloutSettings
    prompts: PromptBuilder
    verify: TickGather
    critic: CriticFront | None
    gates: LockStep
    rng_key: str = ""  # with a prompt's global index, seeds its random fallback
    seed: int | None = None
    prompt_offset: int = 0
    clock: Clock = field(default_factory=Clock)
    counts: Counter = field(default_factory=Counter)  # speculative refinement's cost

    @classmethod
    def build(
        cls,
        problems,
        prompt_ids,
        *,
        policy,
        verifier,
        critic,
        prompts,
        settings,
        rng_key,
        seed,
        prompt_offset,
        verify_submit,
    ) -> StepContext:
        """The context of a step. The groups wait for each other (:class:`LockStep`) when
        the sampler's numbers depend on its batches (``batches_continuously = False``:
        ``hf``, a batch-only backend): its batches and its draws from torch's random
        numbers are then the serial rollout's, whatever the timing. Otherwise every
        generation is seeded, from torch's per-step random state when ``seed`` is None,
        so that what is sampled never depends on when a request was made."""
        from cgrpo.builtins.policies.batching import as_async

        sampler = as_async(policy)
        lock_step = not getattr(sampler, "batches_continuously", True)
        if seed is None and not lock_step:
            import torch  # the trainer reseeds it every step (and rank)

            seed = int(torch.randint(0, 2**31 - 1, (1,)))
        batch = len(problems) * settings.samples_per_prompt
        critiquing = settings.refinements_per_prompt > 0 and critic is not None
        return cls(
            problems=problems,
            prompt_ids=prompt_ids,
            sampler=sampler,
            settings=settings,
            prompts=prompts,
            verify=TickGather(_verify_flush(verifier, verify_submit, batch)),
            critic=CriticFront(critic) if critiquing else None,
            gates=LockStep(lock_step, len(problems)),
            rng_key=rng_key,
            seed=seed,
            prompt_offset=prompt_offset,
        )

    @property
    def early(self) -> bool:
        """Whether refinements may start before their group is complete (never in lock
        step: the serial rollout's batches are what it reproduces)."""
        return not self.gates.on

    def seed_for(self, *key: int) -> int | None:
        return None if self.seed is None else mix_seed(self.seed, *key)

    async def responses(self, p: int) -> AsyncIterator[tuple[int, Completion]]:
        """Group ``p``'s G samples as (index, completion), each as soon as it is done where
        the sampler streams them (``sample_each``), else all together."""
        params = self.settings.sampling
        seed = self.seed_for(0, self.prompt_offset + p)
        each = getattr(self.sampler, "sample_each", None)
        if callable(each):
            async for j, completion in each(self.prompt_ids[p], params, seed):
                yield j, completion
            return
        got = await self.sampler.sample(self.prompt_ids[p], params, seed)
        for j, completion in enumerate(self._counted(got, params.n)):
            yield j, completion

    async def refinement(self, p: int, i: int, prompt_ids: list[int]) -> Completion:
        """One refinement of response ``i`` of group ``p``, same policy and settings."""
        one: SamplingParams = dataclasses.replace(self.settings.sampling, n=1)
        seed = self.seed_for(1, self.prompt_offset + p, i)
        return self._counted(await self.sampler.sample(prompt_ids, one, seed), 1)[0]

    def _counted(self, completions: list[Completion], n: int) -> list[Completion]:
        """``completions``, refused unless there are ``n`` (a backend's broken contract would
        otherwise surface as a missing response far from its cause)."""
        if len(completions) != n:
            name = type(getattr(self.sampler, "policy", self.sampler)).__name__
            raise TrainingError(
                f"policy backend {name}: sample() returned {len(completions)} completions "
                f"for a request of n={n} (AsyncPolicyBackend must return params.n)"
            )
        return completions

    async def verdict(self, text: str, problem: Problem) -> Verdict:
        return (await self.verify.submit([(text, problem)]))[0]
