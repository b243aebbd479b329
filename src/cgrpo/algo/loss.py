"""The Critique-GRPO policy loss, as pure functions on small tensors.

Shapes: B sequences in a (micro-)batch, T response tokens. Every per-token tensor is
(B, T) and aligned with the response tokens; ``response_mask`` is 1 on real response tokens
and 0 on padding; ``refinement_mask`` is 1 on the tokens of refinement rows (a subset of
``response_mask``); initial-response tokens are ``response_mask & ~refinement_mask``.

Per token t of sequence i, with p_t = pi_theta(y_t | q, y_<t):

* initial tokens: ``l = -A_i * r_t`` with ``r_t = p_t / p_old_t``, optionally PPO-clipped
  (``max(-A r, -A clip(r, 1-eps_low, 1+eps_high))``);
* refinement tokens (off-policy, written with a critique in context but trained as a
  response to the original prompt): ``l = -A_i * f(p_t)`` with ``f(p) = p / (p + gamma)``,
  no old probability and no clipping ("policy shaping", LUFFY). Its gradient with respect
  to ``log p`` is ``-A * gamma * p / (p + gamma)^2``: largest at ``p = gamma``. With
  ``gamma=None`` refinement tokens get the plain policy gradient ``-A * p / sg(p)``.

Then ``loss = agg(l) - entropy_coef * agg(H) + kl_coef * agg(KL)``, where ``agg`` is the
configured aggregation (see :func:`aggregate`). No KL and no reference model by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

Aggregation = Literal["token_mean", "seq_mean_token_mean", "token_sum"]
KLEstimator = Literal["k1", "k2", "k3"]


@dataclass(frozen=True)
class LossConfig:
    """Settings of :func:`policy_loss`.

    ``clip_low`` / ``clip_high``: PPO clip range on initial tokens as ``[1-low, 1+high]``;
    ``None`` disables that side (both ``None``: no clipping, the released code's choice).
    ``shaping_gamma``: gamma of f(p) = p/(p+gamma) on refinement tokens; ``None`` = no
    shaping. ``tis_cap``: truncated importance sampling for sampler/trainer mismatch: each
    initial token's loss is multiplied by ``min(p_old / p_sampler, tis_cap)`` (detached),
    where p_old is the trainer's recomputed probability and p_sampler the sampler's.
    ``aggregation``: see :func:`aggregate`; ``normalizer`` is the constant divisor of
    ``token_sum`` (the max response length in the released code).
    """

    clip_low: float | None = 0.2
    clip_high: float | None = 0.2
    shaping_gamma: float | None = 0.1
    aggregation: Aggregation = "token_sum"
    normalizer: float | None = None
    entropy_coef: float = 0.001
    kl_coef: float = 0.0
    kl_estimator: KLEstimator = "k3"
    tis_cap: float | None = None


@dataclass
class LossOutput:
    """The scalar loss to backpropagate and detached float metrics for logging."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] per position, (B, T, V) x (B, T) -> (B, T).

    Uses cross-entropy so the (B, T, V) log-softmax is never materialised.
    """
    flat = -F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), token_ids.reshape(-1), reduction="none"
    )
    return flat.view(token_ids.shape)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax at each position, (B, T, V) -> (B, T)."""
    logits = logits.float()
    logz = torch.logsumexp(logits, dim=-1)
    probs = torch.softmax(logits, dim=-1)
    return logz - (probs * logits).sum(dim=-1)


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    mode: Aggregation,
    *,
    normalizer: float | None = None,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> torch.Tensor:
    """Reduce per-token values (B, T) over the tokens where ``mask`` is 1.

    * ``token_mean``: sum / number of tokens (``num_tokens``: the count over the whole
      mini-batch when this is one micro-batch of it);
    * ``seq_mean_token_mean``: mean over sequences of each sequence's token mean
      (``num_seqs``: the sequence count of the whole mini-batch);
    * ``token_sum``: sum / ``normalizer``, a constant (Dr.GRPO; the released code uses the
      max response length). Additive over sequences: duplicating a sequence doubles its
      gradient, and splitting a batch into micro-batches does not change the total.

    Passing the mini-batch totals makes gradient accumulation over micro-batches give the
    same gradient as one pass over the whole mini-batch, for every mode.
    """
    mask = mask.to(values.dtype)
    if mode == "token_mean":
        denom = num_tokens if num_tokens is not None else mask.sum().clamp(min=1)
        return (values * mask).sum() / denom
    if mode == "seq_mean_token_mean":
        per_seq = (values * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)
        has_tokens = (mask.sum(dim=-1) > 0).to(values.dtype)
        denom = num_seqs if num_seqs is not None else has_tokens.sum().clamp(min=1)
        return (per_seq * has_tokens).sum() / denom
    if mode == "token_sum":
        if normalizer is None or normalizer <= 0:
            raise ValueError("aggregation 'token_sum' needs a positive constant normalizer")
        return (values * mask).sum() / normalizer
    raise ValueError(f"unknown aggregation {mode!r}")


def initial_token_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float | None,
    clip_high: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Importance-ratio loss on on-policy tokens.

    Returns ``(loss (B,T), ratio (B,T), clipped (B,T) bool)``; ``clipped`` marks tokens
    whose clipped branch was taken (their gradient is zero).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    if clip_low is None and clip_high is None:
        return unclipped, ratio, torch.zeros_like(ratio, dtype=torch.bool)
    low = 1.0 - clip_low if clip_low is not None else None
    high = 1.0 + clip_high if clip_high is not None else None
    clipped_loss = -advantages * torch.clamp(ratio, min=low, max=high)
    loss = torch.maximum(unclipped, clipped_loss)
    return loss, ratio, clipped_loss > unclipped


def shaped_token_loss(
    logprobs: torch.Tensor, advantages: torch.Tensor, gamma: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Policy-shaped loss on refinement tokens, independent of any old probability.

    Returns ``(loss (B,T), p (B,T), weight (B,T))`` where ``weight`` is d f / d log p, the
    factor that multiplies ``-A`` in the gradient wrt log p: ``gamma p / (p + gamma)^2``
    with shaping, 1 without.
    """
    p = torch.exp(logprobs)
    if gamma is None:
        loss = -advantages * torch.exp(logprobs - logprobs.detach())
        weight = torch.ones_like(p)
    else:
        loss = -advantages * p / (p + gamma)
        weight = gamma * p / (p + gamma) ** 2
    return loss, p.detach(), weight.detach()


def kl_penalty(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator
) -> torch.Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) from sampled tokens (Schulman's k1/k2/k3).

    k1 = log r, k2 = (log r)^2 / 2, k3 = exp(-log r) + log r - 1 with log r = logp - ref.
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.exp(-log_ratio) + log_ratio - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r}")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    n = mask.sum()
    return float((values * mask).sum() / n) if n > 0 else float("nan")


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    refinement_mask: torch.Tensor,
    config: LossConfig,
    *,
    entropy: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    sampler_logprobs: torch.Tensor | None = None,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> LossOutput:
    """The whole Critique-GRPO loss of one (micro-)batch.

    ``advantages`` is (B,) per sequence (or already (B, T)). ``old_logprobs`` may be None
    only when the batch has no initial tokens. ``entropy`` (B, T) is needed when
    ``entropy_coef`` != 0, ``ref_logprobs`` when ``kl_coef`` != 0.
    """
    resp = response_mask.to(logprobs.dtype)
    refine = refinement_mask.to(logprobs.dtype) * resp
    initial = resp - refine
    adv = advantages.to(logprobs.dtype)
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1)
    agg = dict(
        mode=config.aggregation,
        normalizer=config.normalizer,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
    )

    per_token = torch.zeros_like(logprobs)
    metrics: dict[str, float] = {}
    if initial.sum() > 0:
        if old_logprobs is None:
            raise ValueError("old_logprobs is required for initial (on-policy) tokens")
        init_loss, ratio, clipped = initial_token_loss(
            logprobs, old_logprobs, adv, config.clip_low, config.clip_high
        )
        if config.tis_cap is not None:
            if sampler_logprobs is None:
                raise ValueError("tis_cap needs the sampler's log-probs")
            weight = torch.exp(old_logprobs - sampler_logprobs).clamp(max=config.tis_cap).detach()
            init_loss = init_loss * weight
            metrics["tis/weight_mean"] = _masked_mean(weight, initial)
            metrics["tis/capped_fraction"] = _masked_mean(
                (weight >= config.tis_cap).to(logprobs.dtype), initial
            )
        per_token = per_token + init_loss * initial
        metrics["ratio/mean"] = _masked_mean(ratio.detach(), initial)
        metrics["ratio/max"] = float(ratio.detach()[initial.bool()].max())
        metrics["clip/fraction"] = _masked_mean(clipped.to(logprobs.dtype), initial)
    if refine.sum() > 0:
        ref_loss, p, weight = shaped_token_loss(logprobs, adv, config.shaping_gamma)
        per_token = per_token + ref_loss * refine
        metrics["refine/token_prob_mean"] = _masked_mean(p, refine)
        metrics["refine/shaped_weight_mean"] = _masked_mean(weight, refine)

    pg_loss = aggregate(per_token, resp, **agg)
    loss = pg_loss
    metrics["loss/policy"] = float(pg_loss.detach())

    if entropy is not None:
        metrics["entropy/initial"] = _masked_mean(entropy.detach(), initial)
        metrics["entropy/refinement"] = _masked_mean(entropy.detach(), refine)
    if config.entropy_coef != 0.0:
        if entropy is None:
            raise ValueError("entropy_coef != 0 needs the per-token entropy")
        ent = aggregate(entropy, resp, **agg)
        loss = loss - config.entropy_coef * ent
        metrics["loss/entropy_bonus"] = float(-config.entropy_coef * ent.detach())
    if config.kl_coef != 0.0:
        if ref_logprobs is None:
            raise ValueError("kl_coef != 0 needs reference log-probs")
        kl = kl_penalty(logprobs, ref_logprobs, config.kl_estimator)
        kl_term = aggregate(kl, resp, **agg)
        loss = loss + config.kl_coef * kl_term
        metrics["kl/mean"] = _masked_mean(kl.detach(), resp)
        metrics["loss/kl"] = float(config.kl_coef * kl_term.detach())
    metrics["loss/total"] = float(loss.detach())
    return LossOutput(loss=loss, metrics=metrics)
