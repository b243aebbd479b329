"""The Critique-GRPO policy loss, as pure functions on small tensors.

Shapes: B sequences in a (micro-)batch, T response tokens. Every per-token tensor is
(B, T) and aligned with the response tokens; ``response_mask`` is 1 on real response tokens
and 0 on padding; ``refinement_mask`` is 1 on the tokens of refinement rows (a subset of
``response_mask``); initial-response tokens are ``response_mask & ~refinement_mask``.

Per token t of sequence i, with p_t = pi_theta(y_t | q, y_<t):

* initial tokens: ``l = -A_i * r_t`` with ``r_t = p_t / p_old_t``, optionally PPO-clipped
  (``max(-A r, -A clip(r, 1-eps_low, 1+eps_high))``);
* refinement tokens (off-policy, written with a critique in context but trained as a
  response to the original prompt): ``l = -A_i * f(p_t)``, no old probability and no
  clipping. The shaping ``f`` is a choice (:func:`shaped_token_loss`):
  ``p_over_p_plus_gamma``: f(p) = p / (p + gamma) ("policy shaping", LUFFY), gradient
  ``-A * gamma p / (p + gamma)^2 * grad log p``, largest at p = gamma;
  ``p``: f(p) = p (the released code's ``off_policy_reshape=no_reshape``: the behaviour
  probability taken as 1), gradient ``-A * p * grad log p``;
  ``none``: f(p) = p / sg(p), value -A, gradient ``-A * grad log p`` (the plain policy
  gradient, as if the refinement had been sampled by the policy);
  ``log_p``: f(p) = log p, the supervised (cross-entropy) loss with A = 1: what the
  fine-tuning baselines (RAFT, refinement/critique FT) train with; not a recipe choice.
* demonstration tokens (``demonstration_mask``, a subset of the refinement tokens: a
  reference solution in the group, LUFFY): the same shaped loss with its own gamma
  (``demonstration_gamma``; None: ``shaping_gamma``).

Then ``loss = agg(l) - entropy_coef * agg_H(H) + kl_coef * agg_KL(KL)``: the policy term is
aggregated by :func:`aggregate`, the entropy bonus and the KL penalty each by their own
:data:`TermAggregation` (:func:`aggregate_term`). No KL and no reference model by default.

Masked positions never reach a term: every input is replaced by 0 where the mask is 0
before any arithmetic (``torch.where``, as current verl's ``masked_sum`` does), so a NaN
or an infinity in padding (an old log-prob of -inf, say) changes neither the loss nor any
gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

Aggregation = Literal["token_mean", "seq_mean_token_mean", "token_sum"]
TermAggregation = Literal["same_as_policy", "token_mean", "micro_batch_token_mean"]
ShapingMode = Literal["p_over_p_plus_gamma", "p", "none", "log_p"]
KLEstimator = Literal["k1", "k2", "k3"]


@dataclass(frozen=True)
class LossConfig:
    """Settings of :func:`policy_loss`.

    ``clip_low`` / ``clip_high``: PPO clip range on initial tokens as ``[1-low, 1+high]``;
    ``None`` disables that side (both ``None``: no clipping, the released code's choice).
    ``shaping`` / ``shaping_gamma``: f on refinement tokens (module docstring).
    ``tis_cap``: truncated importance sampling for sampler/trainer mismatch: each
    initial token's loss is multiplied by ``min(p_old / p_sampler, tis_cap)`` (detached),
    where p_old is the trainer's recomputed probability and p_sampler the sampler's.
    ``aggregation``: see :func:`aggregate`; ``normalizer`` is the constant divisor of
    ``token_sum`` (the max response length in the released code).
    ``entropy_aggregation`` / ``kl_aggregation``: see :func:`aggregate_term`.
    ``demonstration_gamma``: gamma of f on demonstration tokens (None: ``shaping_gamma``).
    """

    clip_low: float | None = 0.2
    clip_high: float | None = 0.2
    shaping: ShapingMode = "p_over_p_plus_gamma"
    shaping_gamma: float = 0.1
    aggregation: Aggregation = "token_sum"
    normalizer: float | None = None
    entropy_coef: float = 0.001
    entropy_aggregation: TermAggregation = "token_mean"
    kl_coef: float = 0.0
    kl_estimator: KLEstimator = "k3"
    kl_aggregation: TermAggregation = "same_as_policy"
    tis_cap: float | None = None
    demonstration_gamma: float | None = None


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


def masked(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values`` where ``mask`` is set, exactly 0 elsewhere (NaN and inf included), with a
    zero gradient there: ``torch.where``, not a product (``nan * 0`` is NaN)."""
    return torch.where(mask.bool(), values, 0.0)


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
    kept = masked(values, mask)
    counts = mask.bool().sum(dim=-1)
    if mode == "token_mean":
        denom = num_tokens if num_tokens is not None else counts.sum().clamp(min=1)
        return kept.sum() / denom
    if mode == "seq_mean_token_mean":
        per_seq = kept.sum(dim=-1) / counts.clamp(min=1)  # 0 for a row without tokens
        denom = num_seqs if num_seqs is not None else (counts > 0).sum().clamp(min=1)
        return per_seq.sum() / denom
    if mode == "token_sum":
        if normalizer is None or normalizer <= 0:
            raise ValueError("aggregation 'token_sum' needs a positive constant normalizer")
        return kept.sum() / normalizer
    raise ValueError(f"unknown aggregation {mode!r}")


def aggregate_term(
    values: torch.Tensor,
    mask: torch.Tensor,
    how: TermAggregation,
    policy: dict,
    micro_batch_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce the per-token entropy or KL (B, T) of one micro-batch.

    * ``same_as_policy``: :func:`aggregate` with the policy term's settings ``policy``;
    * ``token_mean``: sum / the response tokens of the whole mini-batch
      (``policy["num_tokens"]``): the mean token entropy of the update, whatever the
      micro-batching;
    * ``micro_batch_token_mean``: each micro-batch adds its own token mean (the released
      code: verl's ``agg_loss(..., "token-mean")`` per micro-batch), so the term's weight
      grows with the number of micro-batches. ``micro_batch_tokens`` (B,) gives, per row,
      the response-token count of the micro-batch it belongs to when those are formed
      apart from this call's rows (:func:`cgrpo.algo.mixing.token_budget_micro_batches`);
      without it, this call's rows are the micro-batch.
    """
    if how == "same_as_policy":
        return aggregate(values, mask, **policy)
    if how == "token_mean":
        return aggregate(values, mask, "token_mean", num_tokens=policy.get("num_tokens"))
    if how == "micro_batch_token_mean":
        per_row = masked(values, mask).sum(dim=-1)
        if micro_batch_tokens is None:
            return per_row.sum() / mask.bool().sum().clamp(min=1)
        return (per_row / micro_batch_tokens.to(per_row.dtype).clamp(min=1)).sum()
    raise ValueError(f"unknown entropy/KL aggregation {how!r}")


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
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mode: ShapingMode = "p_over_p_plus_gamma",
    gamma: float | torch.Tensor = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss on refinement tokens, ``-A * f(p)``, independent of any old probability.

    Returns ``(loss (B,T), p (B,T), weight (B,T))`` where ``weight`` is d f / d log p, the
    factor that multiplies ``-A`` in the gradient wrt log p: ``gamma p / (p + gamma)^2``
    for ``p_over_p_plus_gamma``, ``p`` for ``p``, 1 for ``none`` and ``log_p``.
    ``gamma`` may be a tensor broadcast against ``logprobs`` (a gamma per token).
    """
    p = torch.exp(logprobs)
    if mode == "p_over_p_plus_gamma":
        loss = -advantages * p / (p + gamma)
        weight = gamma * p / (p + gamma) ** 2
    elif mode == "p":
        loss = -advantages * p
        weight = p
    elif mode == "none":
        loss = -advantages * torch.exp(logprobs - logprobs.detach())
        weight = torch.ones_like(p)
    elif mode == "log_p":
        loss = -advantages * logprobs
        weight = torch.ones_like(p)
    else:
        raise ValueError(f"unknown shaping mode {mode!r}")
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
    n = mask.bool().sum()
    return float(masked(values, mask).sum() / n) if n > 0 else float("nan")


@dataclass
class _Tokens:
    """The boolean masks of one (micro-)batch: all response tokens, refinement tokens,
    initial tokens."""

    response: torch.Tensor
    refinement: torch.Tensor  # off-policy: refinements and demonstrations
    initial: torch.Tensor
    demonstration: torch.Tensor

    @classmethod
    def of(
        cls,
        response_mask: torch.Tensor,
        refinement_mask: torch.Tensor,
        demonstration_mask: torch.Tensor | None = None,
    ) -> _Tokens:
        resp = response_mask.bool()
        refine = refinement_mask.bool() & resp
        demo = refine & demonstration_mask.bool() if demonstration_mask is not None else None
        return cls(resp, refine, resp & ~refine, torch.zeros_like(resp) if demo is None else demo)


def _initial_term(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    adv: torch.Tensor,
    tokens: _Tokens,
    config: LossConfig,
    sampler_logprobs: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token loss on initial tokens (0 elsewhere) and its metrics."""
    initial = tokens.initial
    if old_logprobs is None:
        raise ValueError("old_logprobs is required for initial (on-policy) tokens")
    old = masked(old_logprobs, initial)
    loss, ratio, clipped = initial_token_loss(logprobs, old, adv, config.clip_low, config.clip_high)
    metrics: dict[str, float] = {}
    if config.tis_cap is not None:
        if sampler_logprobs is None:
            raise ValueError("tis_cap needs the sampler's log-probs")
        sampler = masked(sampler_logprobs, initial)
        weight = torch.exp(old - sampler).clamp(max=config.tis_cap).detach()
        loss = loss * weight
        metrics["tis/weight_mean"] = _masked_mean(weight, initial)
        capped = (weight >= config.tis_cap).to(logprobs.dtype)
        metrics["tis/capped_fraction"] = _masked_mean(capped, initial)
    metrics["ratio/mean"] = _masked_mean(ratio.detach(), initial)
    metrics["ratio/max"] = float(ratio.detach()[initial].max())
    metrics["clip/fraction"] = _masked_mean(clipped.to(logprobs.dtype), initial)
    return masked(loss, initial), metrics


def _refinement_term(
    logprobs: torch.Tensor, adv: torch.Tensor, tokens: _Tokens, config: LossConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token shaped loss on refinement and demonstration tokens (0 elsewhere) and its
    metrics, per kind."""
    gamma: float | torch.Tensor = config.shaping_gamma
    if config.demonstration_gamma is not None and tokens.demonstration.any():
        gamma = torch.where(tokens.demonstration, config.demonstration_gamma, gamma)
    loss, p, weight = shaped_token_loss(logprobs, adv, config.shaping, gamma)
    refined = tokens.refinement & ~tokens.demonstration
    metrics = {
        "refine/token_prob_mean": _masked_mean(p, refined),
        "refine/shaped_weight_mean": _masked_mean(weight, refined),
    }
    if tokens.demonstration.any():
        metrics["demonstration/token_prob_mean"] = _masked_mean(p, tokens.demonstration)
        metrics["demonstration/shaped_weight_mean"] = _masked_mean(weight, tokens.demonstration)
    return masked(loss, tokens.refinement), metrics


def _regularizers(
    logprobs: torch.Tensor,
    tokens: _Tokens,
    config: LossConfig,
    agg: dict,
    entropy: torch.Tensor | None,
    ref_logprobs: torch.Tensor | None,
    micro_batch_tokens: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``-entropy_coef * H + kl_coef * KL``, each aggregated as configured, and metrics."""
    resp = tokens.response
    term = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    metrics: dict[str, float] = {}
    if entropy is not None:
        ent = masked(entropy, resp)
        metrics["entropy/initial"] = _masked_mean(ent.detach(), tokens.initial)
        refined = tokens.refinement & ~tokens.demonstration
        metrics["entropy/refinement"] = _masked_mean(ent.detach(), refined)
        if tokens.demonstration.any():
            metrics["entropy/demonstration"] = _masked_mean(ent.detach(), tokens.demonstration)
    if config.entropy_coef != 0.0:
        if entropy is None:
            raise ValueError("entropy_coef != 0 needs the per-token entropy")
        bonus = aggregate_term(ent, resp, config.entropy_aggregation, agg, micro_batch_tokens)
        term = term - config.entropy_coef * bonus
        metrics["loss/entropy_bonus"] = float(-config.entropy_coef * bonus.detach())
    if config.kl_coef != 0.0:
        if ref_logprobs is None:
            raise ValueError("kl_coef != 0 needs reference log-probs")
        kl = masked(kl_penalty(logprobs, masked(ref_logprobs, resp), config.kl_estimator), resp)
        penalty = aggregate_term(kl, resp, config.kl_aggregation, agg, micro_batch_tokens)
        term = term + config.kl_coef * penalty
        metrics["kl/mean"] = _masked_mean(kl.detach(), resp)
        metrics["loss/kl"] = float(config.kl_coef * penalty.detach())
    return term, metrics


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
    micro_batch_tokens: torch.Tensor | None = None,
    demonstration_mask: torch.Tensor | None = None,
) -> LossOutput:
    """The whole Critique-GRPO loss of one (micro-)batch.

    ``advantages`` is (B,) per sequence (or already (B, T)); it may arrive in float64 and
    is cast to the log-probs' dtype here. ``old_logprobs`` may be None only when the batch
    has no initial tokens. ``entropy`` (B, T) is needed when ``entropy_coef`` != 0,
    ``ref_logprobs`` when ``kl_coef`` != 0. ``num_tokens`` / ``num_seqs``: the mini-batch
    totals (see :func:`aggregate`); ``micro_batch_tokens`` (B,): see :func:`aggregate_term`.
    ``demonstration_mask`` (B, T): the refinement-mask tokens that are demonstrations.
    """
    tokens = _Tokens.of(response_mask, refinement_mask, demonstration_mask)
    logprobs = masked(logprobs, tokens.response)
    adv = advantages.to(logprobs.dtype)
    adv = masked(adv.unsqueeze(-1) if adv.dim() == 1 else adv, tokens.response)
    agg = dict(
        mode=config.aggregation,
        normalizer=config.normalizer,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
    )
    # without a response token the masked log-probs are all exactly 0: a zero loss that is
    # still in the graph, so a micro-batch without tokens (the empty row of a rank without
    # fine-tuning rows) can run its backward, as FSDP and the gradient all-reduce need
    per_token = torch.zeros_like(logprobs) if tokens.response.any() else logprobs
    metrics: dict[str, float] = {}
    if tokens.initial.any():
        init, init_metrics = _initial_term(
            logprobs, old_logprobs, adv, tokens, config, sampler_logprobs
        )
        per_token, metrics = per_token + init, {**metrics, **init_metrics}
    if tokens.refinement.any():
        refine, refine_metrics = _refinement_term(logprobs, adv, tokens, config)
        per_token, metrics = per_token + refine, {**metrics, **refine_metrics}
    pg_loss = aggregate(per_token, tokens.response, **agg)
    metrics["loss/policy"] = float(pg_loss.detach())
    extra, extra_metrics = _regularizers(
        logprobs, tokens, config, agg, entropy, ref_logprobs, micro_batch_tokens
    )
    loss = pg_loss + extra
    metrics.update(extra_metrics)
    metrics["loss/total"] = float(loss.detach())
    return LossOutput(loss=loss, metrics=metrics)
