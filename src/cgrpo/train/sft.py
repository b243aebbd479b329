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
from cgrpo.train.checkpoint import maybe_crash
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
    save: Callable[[int, dict[str, Any]], None] | None = None,
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

    Every ``save_every`` steps ``save(step, state)`` is called with what a later call needs
    to go on exactly (optimizer, schedule and data RNG; the caller saves the weights); such
    a call passes that state back as ``start`` on weights loaded from the same checkpoint,
    and runs the remaining steps only.

    ``wrong`` makes the wrong previous responses (a :class:`cgrpo.interfaces.WrongAnswer`;
    default: built from ``cfg.wrong_answer``). ``sample(problems, seeds)``, for one that
    ``uses_own_sample``, draws one response per problem from the model as it is, with those
    seeds, and returns each with its verdict."""
    with_solution = [p for p in problems if p.solution]
    if not with_solution:
        raise DataError(
            "sft.steps > 0 but no problem has a reference solution; map a "
            "solution field in data.task.options (solution_field) or set sft.steps: 0"
        )
    ref_pool = None
    if refinement_problems is not None:
        ref_pool = [p for p in refinement_problems if p.solution]
        if not ref_pool:
            raise DataError(
                "sft.refinement_task has no problem with a reference solution; map its "
                "solution_field"
            )
    if wrong is None:
        wrong = build_wrong_answer(getattr(cfg, "wrong_answer", None))
    own_samples = bool(getattr(wrong, "uses_own_sample", False))
    rng = random.Random(f"sft:{seed}")
    eos = tokenizer.eos_token_id
    rows: dict[str, TrainRow] = {}
    share = getattr(cfg, "refinement_share", 0.0)
    if share > 0 and critic is None:
        raise ValueError("sft.refinement_share > 0 needs the recipe's critic")

    if own_samples and share > 0 and sample is None:
        raise ValueError("this sft.wrong_answer needs a sampler of the warm-up model")

    def refinement_row(prob: Problem, own: tuple[str, Verdict] | None = None) -> TrainRow | None:
        """A refinement example, or None when its prompt cannot fit (then the plain
        example is used). ``own``: the model's own response and its verdict."""
        previous, wrong_verdict = wrong.make(prob, ref_pool or with_solution, rng, own)
        crit = critic.critique([CritiqueRequest(prob, previous, wrong_verdict)])[0]
        ids = [*tokenizer.encode(prob.solution, add_special_tokens=False), eos]
        try:
            prompt = prompts.refinement_ids(prob, previous, crit.text)
        except RefinementTooLong:
            return None
        return TrainRow(0, prompt, ids, None, True, 0.0)

    own = getattr(cfg, "optim", None)
    if own is not None:  # the warm-up's own optimizer and schedule
        optim = own
        opt, scheduler = make_optimizer(model, own, total_updates=cfg.steps)
    else:
        if optim is None:
            from cgrpo.config.schema import OptimConfig

            optim = OptimConfig()
        opt, scheduler = adamw(model, optim, cfg.lr), None
    max_norm = optim.grad_clip if optim.grad_clip is not None else float("inf")
    first = 1
    if start is not None:  # go on from a warm-up checkpoint
        opt.load_state_dict(start["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(start["scheduler"])
        rng.setstate(start["data_rng"])
        first = int(start["step"]) + 1
    sharded = is_sharded(model)
    history = []
    model.train()

    def plain_row(prob: Problem) -> TrainRow:
        if prob.id not in rows:
            ids = [*tokenizer.encode(prob.solution, add_special_tokens=False), eos]
            rows[prob.id] = TrainRow(0, prompts.prompt_ids(prob), ids, None, False, 0.0)
        return rows[prob.id]

    for step in range(first, cfg.steps + 1):
        batch_rows: list[TrainRow | None] = []
        deferred = []  # own_sample: (position, problem, refinement source), sampled together
        for prob in rng.sample(with_solution, min(cfg.batch_size, len(with_solution))):
            if share > 0 and rng.random() < share:
                source = prob if ref_pool is None else rng.choice(ref_pool)
                if own_samples:
                    deferred.append((len(batch_rows), prob, source))
                    batch_rows.append(None)
                    continue
                if row := refinement_row(source):
                    batch_rows.append(row)
                    continue
            batch_rows.append(plain_row(prob))
        own_used = 0
        if deferred:  # one generate call for the step; seeds from the warm-up's own RNG
            assert sample is not None
            drawn = sample([src for *_, src in deferred], [rng.getrandbits(31) for _ in deferred])
            for (at, prob, source), (text, verdict) in zip(deferred, drawn, strict=True):
                own_used += not verdict.correct
                batch_rows[at] = refinement_row(source, (text, verdict)) or plain_row(prob)
        batch = collate(batch_rows, tokenizer.pad_token_id)  # type: ignore[arg-type]
        with precision.autocast():
            lp, _ = forward_response(model, batch, 1.0, chunk_tokens=chunk_tokens)
        mask = batch.response_mask.to(lp.device)
        loss = -(lp * mask).sum() / mask.sum()
        opt.zero_grad(set_to_none=True)
        # every rank runs the same warm-up batch; FSDP sums the ranks' gradients
        (loss / (distributed.world_size() if sharded else 1)).backward()
        trainable = [p for p in model.parameters() if p.requires_grad]
        norm = grad_norm_value(torch.nn.utils.clip_grad_norm_(trainable, max_norm))
        opt.step()
        metrics = {"sft/loss": float(loss.detach()), "sft/grad_norm": norm,
                   "sft/lr": float(opt.param_groups[0]["lr"])}  # fmt: skip
        if deferred:  # how many refinement examples drew a wrong answer from the model
            metrics["sft/own_wrong_share"] = own_used / len(deferred)
        if scheduler is not None:
            scheduler.step()
        history.append(metrics)
        if on_step is not None:
            on_step(step, metrics)
        if save is not None and save_every and step % save_every == 0:
            save(
                step,
                {
                    "optimizer": opt.state_dict(),
                    "scheduler": None if scheduler is None else scheduler.state_dict(),
                    "data_rng": rng.getstate(),
                },
            )
        maybe_crash("sft", step)
    opt.zero_grad(set_to_none=True)
    return history


def build_wrong_answer(spec: Any) -> Any:
    """The registered wrong-answer maker ``spec`` names (a name, or name and options)."""
    from cgrpo.config.schema import ComponentSpec
    from cgrpo.interfaces import BuildContext
    from cgrpo.plugins import get_registries

    spec = ComponentSpec.model_validate(spec or "other_solution")
    return get_registries()["wrong_answer"].build(spec.name, spec.options, BuildContext())
