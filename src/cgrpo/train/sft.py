"""Optional supervised warm-up on reference solutions, so RL starts from partial skill.

Cross-entropy on the solution tokens (and a final EOS) given the training prompt, batches
drawn by a seeded RNG of its own (the RL data position is untouched).

With ``refinement_share > 0`` that share of the examples are *refinement* examples: the
refinement prompt built from the question, a wrong previous response and the recipe
critic's critique of it, with the correct solution as target. The wrong response is
another problem's solution (``sft.wrong_answer: other_solution``), the problem's own
solution with its final answer changed (``perturbed_answer``: a wrong answer near the
right one, so the model learns to read the critique rather than recompute from scratch),
or the warm-up model's own sampled response when the verifier finds it wrong
(``own_sample``: the mistakes RL will critique; where the model was right, a perturbed
answer instead).
Refinement examples come from the warm-up data or from ``sft.refinement_task``.
Critique-GRPO needs a policy that can act on a critique; strong base models can, a tiny
model cannot until it has seen a few. Rule-based critics make these examples free; an API
critic would be called for each, so keep the share 0 there.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import torch

from cgrpo.algo.mixing import TrainRow, collate
from cgrpo.errors import DataError
from cgrpo.model import distributed
from cgrpo.model.logprobs import DEFAULT_CHUNK_TOKENS, forward_response
from cgrpo.model.precision import FULL, Precision
from cgrpo.model.prompts import PromptBuilder, RefinementTooLong
from cgrpo.model.sharding import grad_norm_value, is_sharded
from cgrpo.train.checkpoint import load_sharded_state, maybe_crash
from cgrpo.train.data import NO_REFINEMENT_SOLUTIONS, NO_SOLUTIONS
from cgrpo.train.update import adamw, make_optimizer
from cgrpo.types import CritiqueRequest, Problem, Verdict


def sft_warmup(
    model: Any,
    tokenizer: Any,
    problems: Sequence[Problem],
    prompts: PromptBuilder,
    cfg: Any,
    seed: int,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    critic: Any = None,
    precision: Precision = FULL,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    optim: Any = None,
    refinement_problems: Sequence[Problem] | None = None,
    start: dict[str, Any] | None = None,
    save: Callable[[int, dict[str, Any], Any], None] | None = None,
    save_every: int = 0,
    sample: Callable[[list[Problem], list[int]], list[tuple[str, Verdict]]] | None = None,
    wrong: Any = None,
) -> list[dict[str, float]]:
    """Run ``cfg.steps`` AdamW steps of supervised fine-tuning; returns per-step metrics.

    The optimizer is ``cfg.optim`` when given (its own lr and schedule over ``cfg.steps``),
    else the recipe's ``optim`` AdamW settings and clipping at the constant ``cfg.lr``.

    Forward passes run under ``precision``'s autocast, projecting ``chunk_tokens`` tokens
    to the vocabulary at a time; the parameters and AdamW state stay in their (float32
    master) dtype. ``refinement_problems``: where refinement examples come from (default:
    ``problems``).

    Every ``save_every`` steps ``save(step, state, optimizer)`` is called with what a later
    call needs to go on exactly (optimizer, schedule and data RNG; the caller saves the
    weights, and a sharded model's optimizer state: then ``state`` holds none, and the
    optimizer is there to save with the model's shards); such a call passes that state back
    as ``start`` on weights loaded from the same checkpoint (with ``start["checkpoint"]``,
    the checkpoint directory, whose shards a sharded model and its optimizer are loaded
    from), and runs the remaining steps only.

    ``wrong`` makes the wrong previous responses (a :class:`cgrpo.interfaces.WrongAnswer`;
    default: built from ``cfg.wrong_answer``). ``sample(problems, seeds)``, for one that
    ``uses_own_sample``, draws one response per problem from the model as it is, with those
    seeds, and returns each with its verdict."""
    examples = WarmupExamples(
        tokenizer, problems, prompts, cfg, seed, critic, refinement_problems, sample, wrong
    )
    trainer = WarmupTrainer(model, cfg, optim, precision, chunk_tokens, tokenizer.pad_token_id)
    first = 1
    if start is not None:  # go on from a warm-up checkpoint
        trainer.load_state(start)
        examples.rng.setstate(start["data_rng"])
        first = int(start["step"]) + 1
    history = []
    model.train()
    for step in range(first, cfg.steps + 1):
        rows, own_wrong_share = examples.batch(cfg.batch_size)
        metrics = trainer.step(rows)
        if own_wrong_share is not None:  # refinement examples that drew a wrong answer
            metrics["sft/own_wrong_share"] = own_wrong_share
        history.append(metrics)
        if on_step is not None:
            on_step(step, metrics)
        if save is not None and save_every and step % save_every == 0:
            save(step, {**trainer.state(), "data_rng": examples.rng.getstate()}, trainer.optimizer)
        maybe_crash("sft", step)
    trainer.optimizer.zero_grad(set_to_none=True)
    return history


class WarmupExamples:
    """Draws each warm-up batch with the warm-up's own seeded RNG: plain examples (prompt ->
    reference solution) and, with ``cfg.refinement_share``, refinement examples (refinement
    prompt from a wrong previous response and its critique -> reference solution)."""

    def __init__(
        self, tokenizer, problems, prompts, cfg, seed, critic, refinement_problems, sample, wrong
    ):
        self.with_solution = [p for p in problems if p.solution]
        if not self.with_solution:
            raise DataError(NO_SOLUTIONS)
        self.ref_pool = None
        if refinement_problems is not None:
            self.ref_pool = [p for p in refinement_problems if p.solution]
            if not self.ref_pool:
                raise DataError(NO_REFINEMENT_SOLUTIONS)
        self.wrong = wrong or build_wrong_answer(getattr(cfg, "wrong_answer", None))
        self.own_samples = bool(getattr(self.wrong, "uses_own_sample", False))
        self.share = getattr(cfg, "refinement_share", 0.0)
        if self.share > 0 and critic is None:
            raise ValueError("sft.refinement_share > 0 needs the recipe's critic")
        if self.own_samples and self.share > 0 and sample is None:
            raise ValueError("this sft.wrong_answer needs a sampler of the warm-up model")
        self.tokenizer, self.prompts, self.critic, self.sample = tokenizer, prompts, critic, sample
        self.rng = random.Random(f"sft:{seed}")
        self._plain: dict[str, TrainRow] = {}

    def _target(self, prob: Problem) -> list[int]:
        ids = self.tokenizer.encode(prob.solution, add_special_tokens=False)
        return [*ids, self.tokenizer.eos_token_id]

    def plain_row(self, prob: Problem) -> TrainRow:
        if prob.id not in self._plain:
            prompt = self.prompts.prompt_ids(prob)
            self._plain[prob.id] = TrainRow(0, prompt, self._target(prob), None, False, 0.0)
        return self._plain[prob.id]

    def refinement_row(self, prob: Problem, own: tuple[str, Verdict] | None = None):
        """A refinement example, or None when its prompt cannot fit (then the plain example
        is used). ``own``: the model's own response and its verdict."""
        pool = self.ref_pool or self.with_solution
        previous, wrong_verdict = self.wrong.make(prob, pool, self.rng, own)
        crit = self.critic.critique([CritiqueRequest(prob, previous, wrong_verdict)])[0]
        try:
            prompt = self.prompts.refinement_ids(prob, previous, crit.text)
        except RefinementTooLong:
            return None
        return TrainRow(0, prompt, self._target(prob), None, True, 0.0)

    def batch(self, size: int) -> tuple[list[TrainRow], float | None]:
        """One step's rows, and the share of own-sample refinement examples whose sampled
        answer was wrong (None when the step drew none)."""
        rows: list[TrainRow | None] = []
        deferred = []  # own_sample: (position, problem, refinement source), sampled together
        for prob in self.rng.sample(self.with_solution, min(size, len(self.with_solution))):
            if self.share > 0 and self.rng.random() < self.share:
                source = prob if self.ref_pool is None else self.rng.choice(self.ref_pool)
                if self.own_samples:
                    deferred.append((len(rows), prob, source))
                    rows.append(None)
                    continue
                if row := self.refinement_row(source):
                    rows.append(row)
                    continue
            rows.append(self.plain_row(prob))
        if not deferred:
            return rows, None  # type: ignore[return-value]
        return rows, self._fill_own_samples(rows, deferred)  # type: ignore[return-value]

    def _fill_own_samples(self, rows: list[TrainRow | None], deferred: list) -> float:
        """One generate call for the step's own-sample examples, seeded from the warm-up's
        own RNG (a resumed warm-up draws the same)."""
        assert self.sample is not None
        seeds = [self.rng.getrandbits(31) for _ in deferred]
        drawn = self.sample([src for *_, src in deferred], seeds)
        wrong = 0
        for (at, prob, source), (text, verdict) in zip(deferred, drawn, strict=True):
            wrong += not verdict.correct
            rows[at] = self.refinement_row(source, (text, verdict)) or self.plain_row(prob)
        return wrong / len(deferred)


class WarmupTrainer:
    """Cross-entropy steps on the solution tokens, with the warm-up's optimizer."""

    def __init__(self, model, cfg, optim, precision, chunk_tokens, pad_id):
        own = getattr(cfg, "optim", None)
        if own is not None:  # the warm-up's own optimizer and schedule
            optim = own
            self.optimizer, self.scheduler = make_optimizer(model, own, total_updates=cfg.steps)
        else:
            if optim is None:
                from cgrpo.config.schema import OptimConfig

                optim = OptimConfig()
            self.optimizer, self.scheduler = adamw(model, optim, cfg.lr), None
        self.max_norm = optim.grad_clip if optim.grad_clip is not None else float("inf")
        self.model, self.precision, self.chunk_tokens, self.pad_id = (
            model, precision, chunk_tokens, pad_id,
        )  # fmt: skip
        self.sharded = is_sharded(model)

    def step(self, rows: list[TrainRow]) -> dict[str, float]:
        batch = collate(rows, self.pad_id)
        with self.precision.autocast():
            lp, _ = forward_response(self.model, batch, 1.0, chunk_tokens=self.chunk_tokens)
        mask = batch.response_mask.to(lp.device)
        loss = -(lp * mask).sum() / mask.sum()
        opt = self.optimizer
        opt.zero_grad(set_to_none=True)
        # every rank runs the same warm-up batch; FSDP sums the ranks' gradients
        (loss / (distributed.world_size() if self.sharded else 1)).backward()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        norm = grad_norm_value(torch.nn.utils.clip_grad_norm_(trainable, self.max_norm))
        opt.step()
        metrics = {"sft/loss": float(loss.detach()), "sft/grad_norm": norm,
                   "sft/lr": float(opt.param_groups[0]["lr"])}  # fmt: skip
        if self.scheduler is not None:
            self.scheduler.step()
        return metrics

    def state(self) -> dict[str, Any]:
        """The optimizer and schedule; a sharded model's optimizer state is saved with the
        model's shards by every rank instead (:func:`save_sharded_checkpoint`)."""
        state = {"scheduler": None if self.scheduler is None else self.scheduler.state_dict()}
        if not self.sharded:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        else:  # the weights and the optimizer come from the checkpoint's shards
            load_sharded_state(state.get("checkpoint"), self.model, self.optimizer)
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])


def build_wrong_answer(spec: Any) -> Any:
    """The registered wrong-answer maker ``spec`` names (a name, or name and options)."""
    from cgrpo.config.schema import ComponentSpec
    from cgrpo.interfaces import BuildContext
    from cgrpo.plugins import get_registries

    spec = ComponentSpec.model_validate(spec or "other_solution")
    return get_registries()["wrong_answer"].build(spec.name, spec.options, BuildContext())
