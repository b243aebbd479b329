"""The policy update of one step: mini-batches of whole groups, micro-batches with gradient
accumulation, grad-norm clipping, one optimizer step per mini-batch (ALGORITHM.md 2.8-2.9).

Each micro-batch's loss is its exact share of the mini-batch loss (the aggregation gets the
mini-batch token and sequence counts), so the accumulated gradient does not depend on how
the mini-batch is cut into micro-batches. Micro-batches are packed longest first, capped by
a sequence count (``micro_batch_size``) and optionally by padded tokens
(``max_tokens_per_micro_batch``, "dynamic batching"), and each is padded only to its own
longest row, so long and short responses use the memory they need.

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

from cgrpo.algo.loss import LossConfig, policy_loss
from cgrpo.algo.mixing import (
    Batch,
    TrainRow,
    collate,
    pack_micro_batches,
    token_budget_micro_batch_count,
    token_budget_micro_batch_tokens,
)
from cgrpo.model import distributed
from cgrpo.model.logprobs import DEFAULT_CHUNK_TOKENS, forward_response
from cgrpo.model.lora import adapters_disabled
from cgrpo.model.precision import FULL, Precision
from cgrpo.model.sharding import grad_norm_value, is_sharded


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
    # the token budget of the micro-batches whose token means the entropy and KL terms
    # take (algorithm.loss.micro_batch_token_budget); None: the update's own
    term_micro_batch_budget: int | None = None


def micro_batches(
    rows: Sequence[TrainRow], settings: UpdateSettings, pad_id: int
) -> list[tuple[list[TrainRow], Batch]]:
    """The micro-batches of ``rows`` as (rows, padded batch), packed by
    :func:`pack_micro_batches` under the settings' sequence and token caps."""
    plan = pack_micro_batches(
        [(len(r.prompt_ids), len(r.response_ids)) for r in rows],
        settings.micro_batch_size,
        settings.max_tokens_per_micro_batch,
    )
    out = []
    for idx in plan:
        chunk = [rows[i] for i in idx]
        out.append((chunk, collate(chunk, pad_id)))
    return out


def _sampler_mismatch(logprobs: torch.Tensor, micro: Batch, dev: Any) -> dict[str, float]:
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


def _mean_metrics(items: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for m in items for k in m}
    out = {}
    for k in sorted(keys):
        vals = [m[k] for m in items if k in m and not math.isnan(m[k])]
        if vals:
            out[k] = sum(vals) if k.startswith("loss/") else sum(vals) / len(vals)
    return out


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
    cfg = settings.loss
    # per-kind entropy is always logged (no gradient); the bonus needs its graph
    entropy_mode = "loss" if cfg.entropy_coef else "metric"
    per_minibatch: list[dict[str, float]] = []
    skipped = 0
    mismatch_measured = False
    model.train()
    chunk = settings.logprob_chunk_tokens
    sharded = is_sharded(model)
    for mini_index, mini_rows in enumerate(split_groups(rows, settings.updates_per_step)):
        # global counts: with several processes each rank's loss is its share of the whole
        num_tokens = distributed.sum_scalar(float(sum(len(r.response_ids) for r in mini_rows)))
        num_seqs = distributed.sum_scalar(float(sum(1 for r in mini_rows if r.response_ids)))
        micro_metrics: list[dict[str, float]] = []
        optimizer.zero_grad(set_to_none=True)
        plan = micro_batches(mini_rows, settings, pad_id)
        micros = [m for _, m in plan]
        term_tokens = term_micro_batch_tokens(plan, settings.term_micro_batch_budget)
        real = len(micros)  # beyond it: zero-weight copies of the last one
        if sharded:  # every rank runs as many forward/backward calls (each all-gathers)
            micros += [micros[-1]] * padding_to_match_ranks(real)
            term_tokens += [term_tokens[-1]] * (len(micros) - real)
        for index, micro in enumerate(micros):
            padding = index >= real
            with settings.precision.autocast():
                logprobs, entropy = forward_response(
                    model, micro, settings.temperature, entropy_mode, chunk
                )
                ref = None
                if cfg.kl_coef and ref_model is not None:
                    with torch.no_grad(), adapters_disabled(ref_model):
                        ref, _ = forward_response(
                            ref_model, micro, settings.temperature, "none", chunk
                        )
            dev = logprobs.device
            # same weights as the sampler's (a padding copy is not measured)
            if mini_index == 0 and not mismatch_measured and not padding:
                mismatch = _sampler_mismatch(logprobs, micro, dev)
                if mismatch:  # (a micro-batch of refinement rows only has nothing to compare)
                    micro_metrics.append(mismatch)
                    mismatch_measured = True
            out = policy_loss(
                logprobs,
                micro.old_logprobs.to(dev),
                micro.advantages.to(dev),
                micro.response_mask.to(dev),
                micro.refinement_mask.to(dev),
                cfg,
                entropy=entropy,
                ref_logprobs=ref,
                sampler_logprobs=None
                if micro.sampler_logprobs is None
                else micro.sampler_logprobs.to(dev),
                num_tokens=num_tokens,
                num_seqs=num_seqs,
                micro_batch_tokens=_on(term_tokens[index], dev),
                demonstration_mask=_on(micro.demonstration_mask, dev),
            )
            if padding:  # a padding copy: same collectives, no gradient, no metrics
                (out.loss * 0.0).backward()
                continue
            out.loss.backward()
            micro_metrics.append(out.metrics)
        params = [p for p in model.parameters() if p.requires_grad]
        if not sharded:  # FSDP has reduce-scattered (summed) the gradients already
            distributed.all_reduce_gradients(params)  # sum of shares = the whole gradient
        max_norm = settings.grad_clip if settings.grad_clip is not None else float("inf")
        with_grad = [p for p in params if p.grad is not None]
        grad_norm = (
            grad_norm_value(torch.nn.utils.clip_grad_norm_(with_grad, max_norm))
            if with_grad
            else 0.0
        )
        metrics = _mean_metrics(micro_metrics)
        metrics["update/grad_norm"] = grad_norm
        if math.isfinite(grad_norm):  # identical on every rank after the all-reduce
            optimizer.step()
        else:
            skipped += 1
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            with warnings.catch_warnings():  # a skipped update still advances the schedule
                warnings.simplefilter("ignore", UserWarning)
                scheduler.step()
        per_minibatch.append(metrics)
    result = _mean_metrics(per_minibatch)
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
