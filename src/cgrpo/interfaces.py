"""The contracts between the training loop and its swappable parts.

The loop in :mod:`cgrpo.train` sees only these Protocols, never a concrete built-in, so a
third-party plugin's component is exactly as capable as a built-in one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from cgrpo.types import Completion, Critique, CritiqueRequest, Problem, SamplingParams, Verdict

if TYPE_CHECKING:  # heavy imports stay out of module import time
    import torch


@dataclass
class BuildContext:
    """What a component factory may need besides its own options.

    ``model`` and ``tokenizer`` are the trainer's policy (set once the model is loaded);
    ``policy`` is the sampling backend (set after it is built, for critics that sample
    with the policy); ``run_dir`` is where the component may keep files (caches);
    ``precision`` is the trainer's :class:`cgrpo.model.precision.Precision` (forward
    passes on ``model`` run under its ``autocast()``; None means float32).
    """

    run_dir: Path | None = None
    seed: int = 0
    model: Any = None
    tokenizer: Any = None
    policy: Any = None
    recipe: Any = None
    precision: Any = None
    extras: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Verifier(Protocol):
    """Scores a response against a problem's reference answer."""

    def verify(self, response: str, problem: Problem) -> Verdict: ...


@runtime_checkable
class Critic(Protocol):
    """Writes one natural-language critique per request; must not raise for one bad item:
    failures become fallback critiques with ``fallback=True``."""

    def critique(self, requests: Sequence[CritiqueRequest]) -> list[Critique]: ...


@runtime_checkable
class PolicyBackend(Protocol):
    """Samples from the current policy.

    ``generate`` takes token-id prompts and returns, per prompt, ``params.n`` completions
    with the sampler's per-token log-probabilities (a list of floats or a 1-D float
    tensor). When ``seeds`` is given (one per
    prompt), prompt i's completions must depend only on ``seeds[i]`` and the weights, not
    on batching (``run.reproducible_sampling``; up to the float rounding a different batch
    shape can cause in the logits). ``sync_weights`` is called after every
    optimizer step so the sampler uses the weights just trained (a no-op where the sampler
    *is* the training model).
    """

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]: ...

    def sync_weights(self, model: Any) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class AsyncPolicyBackend(Protocol):
    """A sampler that takes single requests and batches them itself (continuous batching).

    The per-group rollout (:mod:`cgrpo.train.rollout`) runs one coroutine per group and
    awaits ``sample`` for that group's G initial samples and, later, for each of its
    refinements, so a refinement joins the batch while other groups still decode. A backend
    may implement it beside the batch :class:`PolicyBackend` (``generate``); a batch-only
    backend is adapted by :func:`cgrpo.builtins.policies.batching.as_async`, which gathers
    pending requests into batched ``generate`` calls.

    ``Completion.weight_version`` says which weights sampled a completion (the number of
    weight syncs the backend has received, or None when it does not know): rows of a
    pipelined rollout may be sampled with older weights than the trainer's. A backend that
    keeps the count in a ``weight_version`` attribute has it set to the checkpoint's step
    when a run resumes, so that versions count the run's updates (1 before the first).

    A backend whose seeded tokens depend on what else is in its batch (beyond float
    rounding), or that draws unseeded samples from a shared random stream in call order,
    sets the class attribute ``batches_continuously = False`` (``hf``): the rollout then
    sends each stage's requests together, in group order, as the serial rollout did.
    Without it the groups run on their own and every request carries a seed.
    """

    async def sample(
        self, prompt_ids: Sequence[int], params: SamplingParams, seed: int | None = None
    ) -> list[Completion]:
        """params.n completions of one prompt (each with its per-token log-probs), returned
        when all are done. With seed set, the completions depend only on the seed and the
        weights (the same contract as generate's seeds)."""
        ...


def collect_stream(
    batches: Iterable[list[tuple[int, list[Completion]]]], prompts: int
) -> list[list[Completion]]:
    """What ``generate`` returns, from what a backend's optional ``generate_stream`` yields
    (lists of (prompt index, completions), in any order): the completions in prompt order."""
    out: list[list[Completion]] = [[] for _ in range(prompts)]
    for batch in batches:
        for p, completions in batch:
            out[p] = completions
    return out


class StreamedGenerate:
    """``generate`` for a backend whose ``generate_stream`` does the work: the stream,
    collected in prompt order."""

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """``params.n`` completions per prompt, in prompt order."""
        stream = self.generate_stream(prompts, params, seeds)  # type: ignore[attr-defined]
        return collect_stream(stream, len(prompts))


@runtime_checkable
class AdvantageScheme(Protocol):
    """Turns group rewards into one advantage per sequence.

    ``rewards`` is (P, N); ``mask`` (P, N) is True where a group member exists (groups can
    be shorter than N when the refinement fallback keeps none). Returns (P, N) with zeros
    where ``mask`` is False.
    """

    def compute(self, rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class TaskSource(Protocol):
    """A finite, ordered list of problems; the trainer owns shuffling and position."""

    def load(self) -> list[Problem]: ...


@runtime_checkable
class WrongAnswer(Protocol):
    """Makes the wrong previous response of an SFT refinement example (``sft.wrong_answer``):
    ``make`` returns (response text, its verdict) for ``problem``, drawing any randomness
    from ``rng`` (the warm-up's seeded RNG: a resumed warm-up draws the same) and, where it
    needs them, other problems from ``pool``. With ``uses_own_sample`` the warm-up samples
    one response of the model per example (one generate call per step) and passes it with
    its verdict as ``sample``."""

    uses_own_sample: bool

    def make(
        self,
        problem: Problem,
        pool: Sequence[Problem],
        rng: Any,
        sample: tuple[str, Verdict] | None = None,
    ) -> tuple[str, Verdict]: ...


@runtime_checkable
class Benchmark(Protocol):
    """A named evaluation set with the settings its published numbers use.

    ``name`` labels its metrics (``eval/<name>/accuracy``); ``category`` is ``"math"`` or
    ``"general"`` (which macro average it joins); ``verifier`` is a registered verifier's
    name and options; ``k``, ``temperature``, ``top_p`` are its default sampling (k = 1:
    greedy only). ``describe()`` says which data and version were read, for eval.json
    (valid after ``load()``).
    """

    name: str
    category: str
    verifier: tuple[str, dict[str, Any]]
    k: int
    temperature: float
    top_p: float

    def load(self) -> list[Problem]: ...

    def describe(self) -> dict[str, Any]: ...


@runtime_checkable
class Observer(Protocol):
    """A tracker named in a recipe's ``observers:`` list (TensorBoard, W&B, ...). Built on
    the main process only; it sees what metrics.jsonl and samples.jsonl receive."""

    def start(self, run_dir: str, recipe: dict[str, Any], resumed_step: int) -> None:
        """Before the first step: the resolved recipe; ``resumed_step`` > 0 when the run
        resumes from a checkpoint (steps after it are logged again)."""
        ...

    def step(self, step: int, metrics: dict[str, float], samples: list[dict[str, Any]]) -> None:
        """After each step: its metrics and the sequences written to samples.jsonl."""
        ...

    def end(self, status: str) -> None:
        """At the end: ``"completed"``, ``"interrupted"`` or ``"failed"``."""
        ...
