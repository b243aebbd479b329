"""Per-token log-probs and entropy of response tokens without a (B, T, V) logits tensor.

At real shapes the full logits dominate memory: 8 sequences x 6,144 tokens x 151,936
vocabulary is ~28 GiB per float32 copy, and a log-softmax, an entropy and autograd each
keep another. Instead:

1. run the decoder body to its final hidden states (B, L, H);
2. keep only the H-vectors of real response tokens (padding is never projected);
3. project them through the output layer ``chunk_tokens`` tokens at a time, taking
   log-softmax / gather / entropy in float32 per chunk. Backward (a hand-written autograd
   function) recomputes each chunk's logits and builds their gradient in place, so at most
   one chunk's logits exist at any time: peak ~3 x ``chunk_tokens x V`` floats in forward,
   2 x in backward.

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

from cgrpo.algo.loss import entropy_from_logits, token_logprobs
from cgrpo.algo.mixing import Batch, TrainRow, collate
from cgrpo.algo.packing import PackedBatch
from cgrpo.model.sharding import is_sharded

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


def _logits(hidden: torch.Tensor, weight, bias, temperature: float) -> torch.Tensor:
    """float32 logits / T of one chunk (the matmul in the autocast dtype, if any)."""
    logits = F.linear(hidden, weight, bias).float()
    return logits.div_(temperature) if temperature != 1.0 else logits


def _forward_chunks(hidden, weight, bias, targets, temperature, chunk_tokens, with_entropy):
    """(log-probs, log-normalisers, entropies or None) of N tokens, chunk by chunk.

    Per chunk at most three (chunk x V) float32 buffers live at once: the logits, the
    log-sum-exp's temporary, then the probabilities for the entropy."""
    n = hidden.shape[0]
    lps = torch.empty(n, dtype=torch.float32, device=hidden.device)
    logzs = torch.empty_like(lps)
    ents = torch.empty_like(lps) if with_entropy else None
    for s in range(0, n, chunk_tokens):
        e = min(n, s + chunk_tokens)
        z = _logits(hidden[s:e], weight, bias, temperature)
        logz = torch.logsumexp(z, dim=-1)
        lps[s:e] = z.gather(-1, targets[s:e].unsqueeze(-1)).squeeze(-1) - logz
        logzs[s:e] = logz
        if ents is not None:
            logp = z.sub_(logz.unsqueeze(-1))  # in place: z is now log p
            p = logp.exp()
            # H = -sum p log p, as a batched dot product (no p * log p buffer)
            ents[s:e] = -torch.bmm(p.unsqueeze(1), logp.unsqueeze(-1)).view(-1)
        del z
    return lps, logzs, ents


class _ChunkedHeadStats(torch.autograd.Function):
    """Log-probs and entropies of N tokens from hidden states (N, H) through a linear output
    layer, chunk by chunk, with a hand-written backward that recomputes each chunk's logits.

    Gradient of ``g_lp * log p[y] + g_ent * H`` with respect to the logits z (divided by T
    for the pre-temperature logits), with p = softmax(z) and H = -sum p log p:
    ``g_lp * (onehot(y) - p) - g_ent * p * (log p + H)``, built in place in the buffer
    of p: two (chunk x V) buffers per chunk in backward, where autograd would keep five.
    The matmuls of backward run under the autocast state that forward saw."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_tokens, entropy):
        device_type = hidden.device.type
        ctx.autocast = (
            device_type,
            torch.is_autocast_enabled(device_type),
            torch.get_autocast_dtype(device_type),
        )
        lps, logzs, ents = _forward_chunks(
            hidden, weight, bias, targets, temperature, chunk_tokens, entropy != "none"
        )
        if ents is None:
            ents = lps.new_empty(0)
        ctx.save_for_backward(hidden, weight, bias, targets, logzs, ents)
        ctx.temperature, ctx.chunk_tokens = temperature, chunk_tokens
        ctx.entropy_grad = entropy == "loss"
        if not ctx.entropy_grad:  # a metric (or nothing): no gradient flows through it
            ctx.mark_non_differentiable(ents)
        return lps, ents

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        hidden, weight, bias, targets, logzs, ents = ctx.saved_tensors
        device_type, enabled, dtype = ctx.autocast
        t, chunk = ctx.temperature, ctx.chunk_tokens
        n = hidden.shape[0]
        g_lp = torch.zeros_like(logzs) if g_lp is None else g_lp
        if not ctx.entropy_grad:
            g_ent = None
        want = ctx.needs_input_grad
        # only what is asked for: a frozen output layer (LoRA) needs no V x H weight gradient
        d_hidden = torch.zeros_like(hidden) if want[0] else None
        d_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            if want[1]
            else None
        )
        d_bias = torch.zeros_like(bias, dtype=torch.float32) if want[2] else None
        with torch.autocast(device_type, dtype=dtype, enabled=enabled):
            for s in range(0, n, chunk):
                e = min(n, s + chunk)
                h = hidden[s:e]
                logp = _logits(h, weight, bias, t).sub_(logzs[s:e].unsqueeze(-1))
                p = logp.exp()
                if g_ent is not None:  # in the logp buffer: g_lp + g_ent * (log p + H)
                    coef = logp.add_(ents[s:e].unsqueeze(-1)).mul_(g_ent[s:e].unsqueeze(-1))
                    coef.add_(g_lp[s:e].unsqueeze(-1))
                else:
                    coef = g_lp[s:e].unsqueeze(-1)
                dz = p.mul_(coef).neg_()  # -p * coef
                del coef, logp
                rows = torch.arange(e - s, device=dz.device)
                dz[rows, targets[s:e]] += g_lp[s:e]
                if t != 1.0:
                    dz.div_(t)
                if not enabled and dz.dtype != weight.dtype:  # no autocast: match the layer
                    dz, h = dz.to(weight.dtype), h.to(weight.dtype)
                if d_hidden is not None:
                    d_hidden[s:e] = dz @ weight
                if d_weight is not None:
                    d_weight += dz.t() @ h
                if d_bias is not None:
                    d_bias += dz.sum(0)
                del dz
        return (
            d_hidden,
            None if d_weight is None else d_weight.to(weight.dtype),
            None if d_bias is None else d_bias.to(bias.dtype),
            None,
            None,
            None,
            None,
        )


def chunked_token_stats(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: torch.nn.Linear,
    temperature: float,
    entropy: EntropyMode,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (N,) and entropies (N,) of N tokens from their hidden states (N, H).

    Chunks of ``chunk_tokens`` rows are projected and reduced one at a time, in forward
    and (recomputed) in backward, so no (N, V) tensor ever exists."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    weight, bias = head.weight, head.bias
    grad = torch.is_grad_enabled() and (
        hidden.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    if not grad:
        lps, _, ents = _forward_chunks(
            hidden, weight, bias, targets, temperature, chunk_tokens, entropy != "none"
        )
        return lps, ents
    lps, ents = _ChunkedHeadStats.apply(
        hidden, weight, bias, targets, temperature, chunk_tokens, entropy
    )
    return lps, (None if entropy == "none" else ents)


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


def sharded_body(model: Any, decoder: Any, inputs: dict[str, Any]) -> torch.Tensor:
    """The decoder body's last hidden state of an FSDP-sharded model.

    The body is reached through the root's own forward (its hooks all-gather the root's
    parameters: embeddings, final norm, output layer) with ``logits_to_keep`` an empty
    index list, so no logits are computed; a forward hook on the body captures its output.
    The root's parameters stay gathered after its forward until its backward, so the
    chunked output layer reads the full weight and its gradient is reduce-scattered by
    FSDP's end-of-backward callback."""
    captured: list[torch.Tensor] = []
    hook = decoder.register_forward_hook(
        lambda module, args, out: captured.append(out.last_hidden_state)
    )
    try:
        empty = torch.empty(0, dtype=torch.long, device=inputs["input_ids"].device)
        model(**inputs, logits_to_keep=empty)
    finally:
        hook.remove()
    head = model.get_output_embeddings()
    if hasattr(head.weight, "full_tensor"):  # resharded after all: gather the root again
        model.unshard()
    return captured[0]


def _full_attention_cache(model: Any) -> Any:
    """An empty transformers ``DynamicCache`` for ``model`` when every layer of it is a plain
    full-attention layer (keys and values that a batch index can select), else None."""
    try:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        cache = DynamicCache(config=model.config)
    except Exception:  # an older transformers, or a config DynamicCache cannot read
        return None
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    return cache


def _shared_prompt_hidden(
    model: Any, decoder: Any, batch: Batch, inputs: dict[str, torch.Tensor]
) -> torch.Tensor | None:
    """(B, T, H) hidden states that predict the response tokens, computing each distinct
    prompt of the batch once; None where that does not apply.

    A group's G + K rows share one prompt (refinements are trained on the original prompt),
    so the plain forward runs every prompt token G + K times, forward and backward. Here
    the distinct prompts run once, with the decoder's key/value cache on; each row then
    runs its response against its prompt's keys and values (a batch index of the cache),
    and autograd sums every row's gradient into the one prompt computation: the same
    values and gradients as the plain forward, to float rounding (tested). The hidden
    state that predicts response token 0 is the prompt's last one.

    Not used when it cannot be exact or does not pay: gradient checkpointing
    (transformers drops the cache in checkpointed layers), layers that are not plain full
    attention (sliding windows, linear attention), or fewer than two rows per distinct
    prompt on average."""
    lp = batch.prompt_len
    prompt_ids, prompt_mask = inputs["input_ids"][:, :lp], inputs["attention_mask"][:, :lp]
    rows = prompt_ids.shape[0]
    if lp == 0 or rows < 2 or getattr(model, "is_gradient_checkpointing", False):
        return None
    prompts, inverse = torch.unique(
        torch.cat([prompt_ids, prompt_mask], dim=1), dim=0, return_inverse=True
    )
    if 2 * prompts.shape[0] > rows:
        return None
    cache = _full_attention_cache(model)
    if cache is None:
        return None
    first = inputs["position_ids"][:, :lp]
    # one row per distinct prompt, taken from the batch (torch.unique's rows are sorted)
    take = torch.empty(prompts.shape[0], dtype=torch.long, device=inverse.device)
    take[inverse] = torch.arange(rows, device=inverse.device)
    prompt_hidden = decoder(
        input_ids=prompt_ids[take],
        attention_mask=prompt_mask[take],
        position_ids=first[take],
        past_key_values=cache,
        use_cache=True,
    ).last_hidden_state  # (P, lp, H)
    cache.batch_select_indices(inverse)  # every row's prompt keys and values
    response_hidden = decoder(
        input_ids=inputs["input_ids"][:, lp:],
        attention_mask=inputs["attention_mask"],
        position_ids=inputs["position_ids"][:, lp:],
        past_key_values=cache,
        use_cache=True,
    ).last_hidden_state  # (B, T, H)
    return torch.cat([prompt_hidden[inverse, -1:], response_hidden[:, :-1]], dim=1)


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
    batch: Batch | PackedBatch,
    temperature: float,
    entropy: EntropyMode = "none",
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (B, T) of the batch's response tokens, and their entropies (B, T) unless
    ``entropy == "none"``; zeros on padding.

    Position ``prompt_len - 1 + t`` of the sequence predicts response token t. Runs under
    whatever autocast the caller set (see :mod:`cgrpo.model.precision`). A packed
    micro-batch (:class:`cgrpo.algo.packing.PackedBatch`) runs :func:`forward_packed
    <cgrpo.model.packing.forward_packed>`."""
    if isinstance(batch, PackedBatch):
        from cgrpo.model.packing import forward_packed

        return forward_packed(model, batch, temperature, entropy, chunk_tokens)
    parts = split_head(model)
    if parts is None:
        return full_logits_forward(model, batch, temperature, entropy)
    decoder, head = parts
    inputs, device = _inputs(model, batch)
    t = batch.response_ids.shape[1]
    start = batch.prompt_len - 1
    if is_sharded(model):
        hidden = sharded_body(model, decoder, inputs)[:, start : start + t]
    else:
        hidden = _shared_prompt_hidden(model, decoder, batch, inputs)
        if hidden is None:
            hidden = decoder(**inputs).last_hidden_state[:, start : start + t]  # (B, T, H)
    mask = batch.response_mask.to(device).bool()  # (B, T)
    selected = hidden[mask]  # (N, H): real response tokens only
    targets = batch.response_ids.to(device)[mask]
    lp, ent = chunked_token_stats(selected, targets, head, temperature, entropy, chunk_tokens)
    return rows_from_tokens(mask, lp, ent)


def rows_from_tokens(
    mask: torch.Tensor, lp: torch.Tensor, ent: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, T) log-probs and entropies from per-token values listed in ``mask``'s order
    (row by row), zeros elsewhere."""
    logprobs = torch.zeros(mask.shape, dtype=lp.dtype, device=mask.device).masked_scatter(mask, lp)
    if ent is None:
        return logprobs, None
    return logprobs, torch.zeros(mask.shape, dtype=ent.dtype, device=mask.device).masked_scatter(
        mask, ent
    )


def sequence_logprobs(
    model: Any,
    prompt: list[int],
    response: list[int],
    temperature: float,
    pad_id: int,
    precision: Any,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> torch.Tensor:
    """The trainer's log-probs (T,) of one response after its prompt, without gradient and
    under ``precision``'s autocast: what a sampler's log-probs of the same tokens are
    compared with (the weight-sync probes of the vLLM backends)."""
    row = TrainRow(0, list(prompt), list(response), None, False, 0.0)
    with torch.no_grad(), precision.autocast():
        lp, _ = forward_response(
            model, collate([row], pad_id), temperature, chunk_tokens=chunk_tokens
        )
    return lp[0].float().cpu()[: len(response)]
