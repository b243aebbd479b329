"""The policy update of one step: mini-batches of whole groups, micro-batches with gradient
accumulation, grad-norm clipping, one optimizer step per mini-batch (ALGORITHM.md 2.8-2.9).

Each micro-batch's loss is its exact share of the mini-batch loss (the aggregation gets the
mini-batch token and sequence counts), so the accumulated gradient does not depend on how
the mini-batch is cut into micro-batches. Two ways to cut it:

* padded (the default): rows longest first, capped by a sequence count
  (``micro_batch_size``) and optionally by padded tokens (``max_tokens_per_micro_batch``,
  "dynamic batching"), each micro-batch padded to its own longest row;
* packed (``micro_batch_tokens``): rows concatenated without padding up to that many
  tokens, a group's shared prompt once (:mod:`cgrpo.algo.packing`,
  :mod:`cgrpo.model.packing`). The same per-row (B, T) log-probs reach the same loss, so
  the numbers are the padded path's to float rounding.

``update/token_utilization`` is real tokens over the positions the model body processed.

Precision: forward and backward run under the recipe's autocast (bf16 matmuls), while the
parameters, gradients and AdamW state stay float32 (:mod:`cgrpo.model.precision`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cgrpo.algo.loss import LossConfig, LossOutput, policy_loss
from cgrpo.algo.mixing import (
    Batch,
    TrainRow,
    collate,
    pack_micro_batches,
    token_budget_micro_batch_count,
    token_budget_micro_batch_tokens,
)
from cgrpo.algo.packing import PackedBatch, collate_packed, plan_packs
from cgrpo.model import distributed
from cgrpo.model.logprobs import DEFAULT_CHUNK_TOKENS, forward_response
from cgrpo.model.lora import adapters_disabled
from cgrpo.model.precision import FULL, Precision
from cgrpo.model.sharding import grad_norm_value, is_sharded

MicroBatch = Batch | PackedBatch


@dataclass(frozen=True)
class UpdateSettings:
    updates_per_step: int
    micro_batch_size: int
    temperature: float
    loss: LossConfig
    grad_clip: float | None
    max_tokens_per_micro_batch: int | None = None
    logprob_chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    precision: Precision = FULL
    micro_batch_tokens: int | None = None  # set: packed micro-batches of this many tokens
    # the token budget of the micro-batches whose token means the entropy and KL terms
    # take (algorithm.loss.micro_batch_token_budget); None: the update's own
    term_micro_batch_budget: int | None = None


def micro_batches(
    rows: Sequence[TrainRow], settings: UpdateSettings, pad_id: int
) -> list[tuple[list[TrainRow], MicroBatch]]:
    """The micro-batches of ``rows`` as (rows, batch): packed up to
    ``micro_batch_tokens`` when it is set, else padded (:func:`pack_micro_batches` under
    the sequence and token caps)."""
    if settings.micro_batch_tokens is not None:
        keys = [(tuple(r.prompt_ids), len(r.prompt_ids), len(r.response_ids)) for r in rows]
        plan = plan_packs(keys, settings.micro_batch_tokens)
        build = collate_packed
    else:
        plan = pack_micro_batches(
            [(len(r.prompt_ids), len(r.response_ids)) for r in rows],
            settings.micro_batch_size,
            settings.max_tokens_per_micro_batch,
        )
        build = collate
    out = []
    for idx in plan:
        chunk = [rows[i] for i in idx]
        out.append((chunk, build(chunk, pad_id)))
    return out


def _sampler_mismatch(logprobs: torch.Tensor, micro: MicroBatch, dev: Any) -> dict[str, float]:
    """|trainer log-prob - sampler log-prob| on the initial tokens of a micro-batch, measured
    before the first optimizer step of the step (same weights on both sides); empty when
    the micro-batch has no initial tokens."""
    sampler = micro.sampler_logprobs if micro.sampler_logprobs is not None else micro.old_logprobs
    mask = (micro.response_mask - micro.refinement_mask).to(dev)
    if mask.sum() == 0:
        return {}
    diff = (logprobs.detach() - sampler.to(dev)).abs() * mask
    return {
        "sampler/logprob_diff_mean": float(diff.sum() / mask.sum()),
        "sampler/logprob_diff_max": float(diff.max()),
    }


# which tokens each per-token metric is a mean over (the rest are means of their own kind)
_METRIC_TOKENS = {
    "ratio/": "initial",
    "clip/": "initial",
    "tis/": "initial",
    "sampler/": "initial",
    "entropy/initial": "initial",
    "refine/": "refinement",
    "entropy/refinement": "refinement",
    "demonstration/": "demonstration",
    "entropy/demonstration": "demonstration",
    "kl/": "response",
}


def _token_counts(micro: MicroBatch) -> dict[str, float]:
    """Tokens of each kind: the refinement kind excludes demonstrations (the loss's
    ``refine/`` metrics average over refinements only)."""
    response, off_policy = float(micro.response_mask.sum()), float(micro.refinement_mask.sum())
    demo = micro.demonstration_mask
    demonstration = 0.0 if demo is None else float(demo.sum())
    return {
        "response": response,
        "refinement": off_policy - demonstration,
        "demonstration": demonstration,
        "initial": response - off_policy,
    }


def _combine(parts: list[tuple[dict[str, float], dict[str, float]]]) -> dict[str, float]:
    """One mini-batch's metrics from its micro-batches' (metrics, token counts): loss
    shares add up, maxima take the maximum, per-token means are weighted by the tokens they
    average over (so no metric depends on how the rows were cut into micro-batches), any
    other metric is a plain mean; NaN (no such tokens) is skipped."""
    out: dict[str, float] = {}
    for key in sorted({k for m, _ in parts for k in m}):
        kind = next((v for p, v in _METRIC_TOKENS.items() if key.startswith(p)), None)
        vals = [(m[key], c.get(kind, 1.0)) for m, c in parts if key in m]
        vals = [(v, w) for v, w in vals if not math.isnan(v)]
        if not vals:
            continue
        if key.startswith("loss/"):
            out[key] = sum(v for v, _ in vals)
        elif key.endswith("max"):  # ratio/max, sampler/logprob_diff_max
            out[key] = max(v for v, _ in vals)
        elif kind is not None and sum(w for _, w in vals) > 0:
            out[key] = sum(v * w for v, w in vals) / sum(w for _, w in vals)
        else:
            out[key] = sum(v for v, _ in vals) / len(vals)
    return out


def term_micro_batch_tokens(
    plan: list[tuple[list[TrainRow], Batch]], budget: int | None
) -> list[torch.Tensor | None]:
    """Per micro-batch of ``plan``, each row's response-token count in the micro-batch the
    released code would put it in (:func:`token_budget_micro_batch_tokens`, with every
    rank using the largest count of any, as verl does), for the loss's per-micro-batch
    entropy and KL means; ``None`` each without a budget (the update's own micro-batches)."""
    if budget is None:
        return [None] * len(plan)
    rows = [r for chunk, _ in plan for r in chunk]
    lengths = [(len(r.prompt_ids), len(r.response_ids)) for r in rows]
    parts = int(distributed.max_scalar(float(token_budget_micro_batch_count(lengths, budget))))
    tokens = token_budget_micro_batch_tokens(lengths, budget, parts)
    counts = dict(zip(map(id, rows), tokens, strict=True))
    return [torch.tensor([float(counts[id(r)]) for r in chunk]) for chunk, _ in plan]


def _on(tensor: torch.Tensor | None, dev: Any) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(dev)


def padding_to_match_ranks(count: int) -> int:
    """How many calls this rank must add so it makes as many as the rank with the most
    (0 for one process): under FSDP every forward and backward is collective."""
    return int(distributed.max_scalar(float(count))) - count


def split_groups(rows: Sequence[TrainRow], parts: int) -> list[list[TrainRow]]:
    """Split rows into ``parts`` mini-batches of whole groups (groups never straddle)."""
    groups = sorted({r.group for r in rows})
    size = math.ceil(len(groups) / parts)
    chunks = [set(groups[i : i + size]) for i in range(0, len(groups), size)]
    return [[r for r in rows if r.group in chunk] for chunk in chunks]


@dataclass
class _MiniBatch:
    """One mini-batch's micro-batches and the global counts each loss share divides by."""

    micros: list[MicroBatch]
    real: int  # micro-batches beyond it are zero-weight copies (sharded models only)
    num_tokens: float
    num_seqs: float
    # per micro-batch, each row's token count for the entropy / KL means (None: its own)
    term_tokens: list[torch.Tensor | None]


def _mini_batch(model: Any, rows: list[TrainRow], settings: UpdateSettings, pad_id: int):
    # global counts: with several processes each rank's loss is its share of the whole
    num_tokens = distributed.sum_scalar(float(sum(len(r.response_ids) for r in rows)))
    num_seqs = distributed.sum_scalar(float(sum(1 for r in rows if r.response_ids)))
    plan = micro_batches(rows, settings, pad_id)
    micros = [m for _, m in plan]
    term_tokens = term_micro_batch_tokens(plan, settings.term_micro_batch_budget)
    real = len(micros)
    if is_sharded(model):  # every rank runs as many forward/backward calls (each all-gathers)
        extra = padding_to_match_ranks(real)
        micros += [micros[-1]] * extra
        term_tokens += [term_tokens[-1]] * extra
    return _MiniBatch(micros, real, num_tokens, num_seqs, term_tokens)


def _micro_loss(
    model: Any, index: int, mini: _MiniBatch, settings: UpdateSettings, ref_model: Any
) -> tuple[LossOutput, torch.Tensor]:
    """Forward (policy, and the reference for KL) and the loss share of the mini-batch's
    ``index``-th micro-batch; returns the loss and the log-probs."""
    micro = mini.micros[index]
    cfg, chunk = settings.loss, settings.logprob_chunk_tokens
    # per-kind entropy is always logged (no gradient); the bonus needs its graph
    entropy_mode = "loss" if cfg.entropy_coef else "metric"
    with settings.precision.autocast():
        logprobs, entropy = forward_response(
            model, micro, settings.temperature, entropy_mode, chunk
        )
        ref = None
        if cfg.kl_coef and ref_model is not None:
            with torch.no_grad(), adapters_disabled(ref_model):
                ref, _ = forward_response(ref_model, micro, settings.temperature, "none", chunk)
    dev = logprobs.device
    sampler = micro.sampler_logprobs
    out = policy_loss(
        logprobs,
        micro.old_logprobs.to(dev),
        micro.advantages.to(dev),
        micro.response_mask.to(dev),
        micro.refinement_mask.to(dev),
        cfg,
        entropy=entropy,
        ref_logprobs=ref,
        sampler_logprobs=None if sampler is None else sampler.to(dev),
        num_tokens=mini.num_tokens,
        num_seqs=mini.num_seqs,
        micro_batch_tokens=_on(mini.term_tokens[index], dev),
        demonstration_mask=_on(micro.demonstration_mask, dev),
    )
    return out, logprobs


def _accumulate(model, mini: _MiniBatch, settings, ref_model, measure_mismatch: bool):
    """Forward and backward of every micro-batch of a mini-batch (gradients accumulate);
    returns the mini-batch's metrics. ``measure_mismatch``: also the sampler / trainer
    log-prob difference on every micro-batch (first mini-batch: the sampler's weights)."""
    parts: list[tuple[dict[str, float], dict[str, float]]] = []
    real = processed = 0
    for index, micro in enumerate(mini.micros):
        out, logprobs = _micro_loss(model, index, mini, settings, ref_model)
        if index >= mini.real:  # a padding copy: same collectives, no gradient, no metrics
            (out.loss * 0.0).backward()
            continue
        if measure_mismatch:
            out.metrics.update(_sampler_mismatch(logprobs, micro, logprobs.device))
        out.loss.backward()
        parts.append((out.metrics, _token_counts(micro)))
        tokens, positions = micro.token_counts
        real, processed = real + tokens, processed + positions
    metrics = _combine(parts)
    metrics["update/token_utilization"] = real / max(1, processed)
    return metrics


def _optimizer_step(model: Any, optimizer, scheduler, settings: UpdateSettings) -> float:
    """Sum the ranks' gradients, clip, and step (skipped when the norm is not finite);
    returns the gradient norm."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not is_sharded(model):  # FSDP has reduce-scattered (summed) the gradients already
        distributed.all_reduce_gradients(params)  # sum of shares = the whole gradient
    max_norm = settings.grad_clip if settings.grad_clip is not None else float("inf")
    with_grad = [p for p in params if p.grad is not None]
    norm = (
        grad_norm_value(torch.nn.utils.clip_grad_norm_(with_grad, max_norm)) if with_grad else 0.0
    )
    if math.isfinite(norm):  # identical on every rank after the all-reduce
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        with warnings.catch_warnings():  # a skipped update still advances the schedule
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
    return norm


def update_policy(
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rows: Sequence[TrainRow],
    settings: UpdateSettings,
    pad_id: int,
    ref_model: Any = None,
) -> dict[str, float]:
    """Run ``updates_per_step`` optimizer steps over ``rows``; returns update metrics.

    ``ref_model`` (for the KL term): a frozen copy, or the LoRA policy itself, whose
    adapters are then disabled for the reference forward."""
    model.train()
    per_minibatch: list[dict[str, float]] = []
    skipped = 0
    for index, mini_rows in enumerate(split_groups(rows, settings.updates_per_step)):
        mini = _mini_batch(model, mini_rows, settings, pad_id)
        optimizer.zero_grad(set_to_none=True)
        metrics = _accumulate(model, mini, settings, ref_model, index == 0)
        metrics["update/grad_norm"] = _optimizer_step(model, optimizer, scheduler, settings)
        skipped += not math.isfinite(metrics["update/grad_norm"])
        per_minibatch.append(metrics)
    result = _combine([(m, {}) for m in per_minibatch])  # mini-batches weigh the same
    for k in [k for k in result if k.startswith("loss/")]:
        result[k] /= len(per_minibatch)  # mean over mini-batches of each mini-batch's loss
    result["update/skipped_nonfinite"] = float(skipped)
    result["update/lr"] = float(optimizer.param_groups[0]["lr"])
    return result


def adamw(model: Any, optim_cfg: Any, lr: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters with the recipe's betas, eps and weight decay
    (``optim``), for RL and for the SFT warm-up alike."""
    return torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=lr,
        betas=tuple(optim_cfg.betas),
        eps=optim_cfg.eps,
        weight_decay=optim_cfg.weight_decay,
    )


def make_optimizer(model: Any, optim_cfg: Any, total_updates: int, lr: float | None = None):
    """AdamW and a LambdaLR schedule (linear warm-up, then constant / linear / cosine from
    the peak lr down to ``min_lr``)."""
    peak = lr if lr is not None else optim_cfg.lr
    opt = adamw(model, optim_cfg, peak)
    warm, kind = optim_cfg.warmup_steps, optim_cfg.schedule
    floor = optim_cfg.min_lr / peak  # the decay ends at min_lr

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_updates - warm))
        decay = 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return floor + (1.0 - floor) * decay

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)
