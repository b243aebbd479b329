"""Per-token log-probs and entropy of response tokens without a (B, T, V) logits tensor.

At real shapes the full logits dominate memory: 8 sequences x 6,144 tokens x 151,936
vocabulary is ~28 GiB per float32 copy, and a log-softmax, an entropy and autograd each
keep another. Instead:

1. run the decoder body to its final hidden states (B, L, H);
2. keep only the H-vectors of real response tokens (padding is never projected);
3. project them through the output layer ``chunk_tokens`` tokens at a time, taking
   log-softmax / gather / entropy in float32 per chunk. Under autograd each chunk is
   checkpointed: backward recomputes that chunk's logits, so at most one chunk's logits
   are alive at any time (peak ~ ``chunk_tokens x V`` floats, times a few temporaries).

The result equals the full computation (:func:`full_logits_forward`, kept as the reference
for tests and as the path for output layers this module does not know) to float32
rounding, gradients included.

Entropy is computed only where it is used: ``"loss"`` keeps its graph for the entropy
bonus; ``"metric"`` computes it without gradient for the per-kind entropy metrics (a few
elementwise passes over each chunk's logits, negligible next to the projection);
``"none"`` skips it.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from cgrpo.train.loss import entropy_from_logits, token_logprobs
from cgrpo.train.mixing import Batch

log = logging.getLogger(__name__)

EntropyMode = Literal["none", "metric", "loss"]
DEFAULT_CHUNK_TOKENS = 512

# config attributes of output layers that do more than a linear projection; models that
# set one are computed through the model's own forward (full logits)
_NONLINEAR_HEAD_ATTRS = ("final_logit_softcapping", "logit_scale", "logits_scaling")
_warned: set[str] = set()


def split_head(model: Any) -> tuple[Any, torch.nn.Linear] | None:
    """``(decoder body, output layer)`` of a transformers causal LM, or None when its
    logits are not a plain linear projection of the body's last hidden state."""
    get_decoder = getattr(model, "get_decoder", None)
    get_head = getattr(model, "get_output_embeddings", None)
    if not callable(get_decoder) or not callable(get_head):
        return None
    config = getattr(model, "config", None)
    special = [a for a in _NONLINEAR_HEAD_ATTRS if getattr(config, a, None) not in (None, 1.0)]
    head = get_head()
    decoder = get_decoder()
    if special or not isinstance(head, torch.nn.Linear) or decoder is None or decoder is model:
        name = type(model).__name__
        if name not in _warned:
            _warned.add(name)
            why = f"config sets {', '.join(special)}" if special else "no separable linear head"
            log.warning("%s: %s; log-probs use full (B, T, V) logits (more memory)", name, why)
        return None
    return decoder, head


def _chunk_stats(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    temperature: float,
    entropy: EntropyMode,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob of each target, entropy) for one chunk of hidden states (C, H)."""
    logits = F.linear(hidden, weight, bias).float() / temperature  # (C, V), float32
    logz = torch.logsumexp(logits, dim=-1)
    logprobs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz
    if entropy == "none":
        return logprobs, logprobs.new_zeros(())
    with torch.set_grad_enabled(entropy == "loss" and torch.is_grad_enabled()):
        probs = torch.exp(logits - logz.unsqueeze(-1))
        ent = logz - (probs * logits).sum(dim=-1)
    return logprobs, ent


def chunked_token_stats(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: torch.nn.Linear,
    temperature: float,
    entropy: EntropyMode,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (N,) and entropies (N,) of N tokens from their hidden states (N, H).

    Each chunk of ``chunk_tokens`` rows is projected, reduced and (under autograd)
    checkpointed, so no (N, V) tensor ever exists."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    lps, ents = [], []
    grad = torch.is_grad_enabled() and (hidden.requires_grad or head.weight.requires_grad)
    for start in range(0, hidden.shape[0], chunk_tokens):
        args = (
            hidden[start : start + chunk_tokens],
            targets[start : start + chunk_tokens],
            head.weight,
            head.bias,
            temperature,
            entropy,
        )
        lp, ent = (
            checkpoint(_chunk_stats, *args, use_reentrant=False) if grad else _chunk_stats(*args)
        )
        lps.append(lp)
        ents.append(ent)
    if not lps:
        empty = hidden.new_zeros((0,), dtype=torch.float32)
        return empty, (empty if entropy != "none" else None)
    return torch.cat(lps), (torch.cat(ents) if entropy != "none" else None)


def _inputs(model: Any, batch: Batch) -> tuple[dict[str, torch.Tensor], torch.device]:
    device = next(model.parameters()).device
    return (
        dict(
            input_ids=batch.input_ids.to(device),
            attention_mask=batch.attention_mask.to(device),
            position_ids=batch.position_ids.to(device),
            use_cache=False,
        ),
        device,
    )


def full_logits_forward(
    model: Any, batch: Batch, temperature: float, entropy: EntropyMode
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reference computation: the model's own (B, T+1, V) logits, then log-softmax
    and entropy over them. Memory grows with B x T x V; used for output layers that
    :func:`split_head` does not recognise, and by tests as the ground truth."""
    inputs, device = _inputs(model, batch)
    t = batch.response_ids.shape[1]
    logits = model(**inputs, logits_to_keep=t + 1).logits[:, :-1, :].float() / temperature
    logprobs = token_logprobs(logits, batch.response_ids.to(device))
    if entropy == "none":
        return logprobs, None
    if entropy == "metric":
        with torch.no_grad():
            return logprobs, entropy_from_logits(logits)
    return logprobs, entropy_from_logits(logits)


def forward_response(
    model: Any,
    batch: Batch,
    temperature: float,
    entropy: EntropyMode = "none",
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (B, T) of the batch's response tokens, and their entropies (B, T) unless
    ``entropy == "none"``; zeros on padding.

    Position ``prompt_len - 1 + t`` of the sequence predicts response token t. Runs under
    whatever autocast the caller set (see :mod:`cgrpo.train.precision`)."""
    parts = split_head(model)
    if parts is None:
        return full_logits_forward(model, batch, temperature, entropy)
    decoder, head = parts
    inputs, device = _inputs(model, batch)
    hidden = decoder(**inputs).last_hidden_state  # (B, L, H)
    t = batch.response_ids.shape[1]
    start = batch.prompt_len - 1
    mask = batch.response_mask.to(device).bool()  # (B, T)
    selected = hidden[:, start : start + t][mask]  # (N, H): real response tokens only
    targets = batch.response_ids.to(device)[mask]
    lp, ent = chunked_token_stats(selected, targets, head, temperature, entropy, chunk_tokens)
    logprobs = torch.zeros(mask.shape, dtype=lp.dtype, device=device).masked_scatter(mask, lp)
    if ent is None:
        return logprobs, None
    return logprobs, torch.zeros(mask.shape, dtype=ent.dtype, device=device).masked_scatter(
        mask, ent
    )
