"""The model side of packed micro-batches (:mod:`cgrpo.algo.packing`): attention confined
to each segment, and the log-probs of a packed micro-batch.

The whole micro-batch runs as one sequence (1, N) with position ids restarting per
segment. Attention is cgrpo's own (``cgrpo_sdpa``, :mod:`cgrpo.model.attention`): given
the layout in the ``cgrpo_packed`` keyword, which transformers hands through to every
attention call, each segment's queries see only its keys (its prompt's, then its own),
causally aligned at the end. Two implementations, chosen per device and dtype:

* **varlen**: one call of a variable-length flash-attention kernel over the whole
  micro-batch (``flash_attn_varlen_func`` where the flash-attn package is installed, else
  torch's own ``torch.nn.attention.varlen.varlen_attn``); CUDA, bf16/fp16 only. Each
  candidate is checked once per device and dtype against the segment loop below (values
  and gradients, including a segment with more keys than queries), and skipped if it
  disagrees or fails;
* **segments**: one ``scaled_dot_product_attention`` per segment (is_causal for a prompt,
  a lower-right causal mask for a response that also sees its prompt). The CPU path, and
  CUDA in float32. Measured on CPU (benchmarks/packing.py) against a block-diagonal mask
  over the whole micro-batch, see docs/performance.md.

A model whose attention does not go through ``cgrpo_sdpa`` (a custom attention in remote
code, flash-attention-2 chosen at load) would attend across rows: :func:`packing_problem`
refuses such models up front, and every packed forward counts the attention calls that
saw the layout and raises if one layer did not.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from cgrpo.algo.packing import PackedBatch
from cgrpo.errors import TrainingError
from cgrpo.model.attention import NAME, PACKED_KEYWORD
from cgrpo.model.logprobs import (
    DEFAULT_CHUNK_TOKENS,
    EntropyMode,
    chunked_token_stats,
    rows_from_tokens,
    sharded_body,
    split_head,
)
from cgrpo.model.sharding import is_sharded

log = logging.getLogger(__name__)


@dataclass
class PackedLayout:
    """A packed micro-batch's segments on the model's device (see ``PackedBatch``)."""

    kv_index: torch.Tensor | None  # None: every segment's keys are its own tokens
    q_bounds: tuple[tuple[int, int], ...]
    k_bounds: tuple[tuple[int, int], ...]
    cu_q: torch.Tensor  # (S + 1,) int32 segment starts, queries
    cu_k: torch.Tensor  # (S + 1,) int32 segment starts, gathered keys
    max_q: int
    max_k: int
    calls: int = 0  # attention calls that used this layout (forward and recomputation)
    masks: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    @classmethod
    def build(cls, kv_index, q_bounds, k_bounds, device: torch.device) -> PackedLayout:
        q_lens = [e - s for s, e in q_bounds]
        k_lens = [e - s for s, e in k_bounds]

        def starts(lengths: list[int]) -> torch.Tensor:
            out = torch.zeros(len(lengths) + 1, dtype=torch.int32)
            out[1:] = torch.tensor(lengths, dtype=torch.int32).cumsum(0)
            return out.to(device)

        # no prompt shared: the keys are the tokens themselves, in order (no gather)
        own = tuple(q_bounds) == tuple(k_bounds) and kv_index.numel() == (k_bounds[-1][1])
        return cls(
            kv_index=None if own else kv_index.to(device),
            q_bounds=tuple(q_bounds),
            k_bounds=tuple(k_bounds),
            cu_q=starts(q_lens),
            cu_k=starts(k_lens),
            max_q=max(q_lens),
            max_k=max(k_lens),
        )

    @classmethod
    def of(cls, batch: PackedBatch, device: torch.device) -> PackedLayout:
        return cls.build(batch.kv_index, batch.q_bounds, batch.k_bounds, device)

    def causal_mask(self, q: int, k: int, device: torch.device) -> torch.Tensor:
        """(q, k) bool: query i sees keys 0 .. k - q + i (aligned at the end)."""
        if (q, k) not in self.masks:
            self.masks[(q, k)] = torch.ones(q, k, dtype=torch.bool, device=device).tril(k - q)
        return self.masks[(q, k)]


# -- attention ------------------------------------------------------------------------------
def _segment_attention(q, k, v, layout: PackedLayout, scale, dropout: float) -> torch.Tensor:
    """(1, Hq, N, d) attention output, one SDPA call per segment; q (1, Hq, N, d), k and v
    (1, Hkv, M, d) already gathered per segment."""
    gqa = q.shape[1] != k.shape[1]
    if gqa and q.device.type != "cpu":  # CPU kernels take GQA with a mask, others may not
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
        gqa = False
    outs = []
    for (q0, q1), (k0, k1) in zip(layout.q_bounds, layout.k_bounds, strict=True):
        lq, lk = q1 - q0, k1 - k0
        mask = None if lq == lk else layout.causal_mask(lq, lk, q.device)
        outs.append(
            F.scaled_dot_product_attention(
                q[:, :, q0:q1],
                k[:, :, k0:k1],
                v[:, :, k0:k1],
                attn_mask=mask,
                dropout_p=dropout,
                is_causal=mask is None,
                scale=scale,
                enable_gqa=gqa,
            )
        )
    return torch.cat(outs, dim=2)


def _repeat_heads(q, k, v):
    if q.shape[1] == k.shape[1]:
        return k, v
    n = q.shape[1] // k.shape[1]
    return k.repeat_interleave(n, dim=1), v.repeat_interleave(n, dim=1)


def _flash_attn_varlen(q, k, v, layout: PackedLayout, scale) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func(
        q, k, v, layout.cu_q, layout.cu_k, layout.max_q, layout.max_k,
        softmax_scale=scale, causal=True,
    )  # fmt: skip


@functools.cache
def _torch_varlen_parameters() -> frozenset[str]:
    from torch.nn.attention.varlen import varlen_attn

    return frozenset(inspect.signature(varlen_attn).parameters)


def _torch_varlen(q, k, v, layout: PackedLayout, scale) -> torch.Tensor:
    """torch's varlen flash attention; its causal switch and GQA support changed between
    torch versions (the probe checks whichever this one has)."""
    from torch.nn.attention.varlen import varlen_attn

    params = _torch_varlen_parameters()
    kwargs: dict[str, Any] = {"scale": scale}
    if "window_size" in params:
        kwargs["window_size"] = (-1, 0)  # causal
    else:
        kwargs["is_causal"] = True
    if "enable_gqa" in params:
        kwargs["enable_gqa"] = q.shape[1] != k.shape[1]
    else:
        k, v = _repeat_heads(q, k, v)
    return varlen_attn(
        q, k, v, layout.cu_q, layout.cu_k, layout.max_q, layout.max_k, **kwargs
    )  # fmt: skip


VARLEN_CANDIDATES: dict[str, Callable] = {
    "flash_attn": _flash_attn_varlen,
    "torch": _torch_varlen,
}
_chosen: dict[tuple[str, torch.dtype], tuple[str, Callable] | None] = {}


def _probe(fn: Callable, device: torch.device, dtype: torch.dtype) -> bool:
    """Does ``fn`` give the segment loop's values and gradients on a square segment and on
    one with more keys than queries (4 query heads, 2 key/value heads)? Run with autograd
    on and autocast off, whatever the caller's context (the first packed forward may be a
    no-grad recompute)."""
    no_autocast = torch.autocast(device.type, enabled=False)
    with torch.inference_mode(False), torch.enable_grad(), no_autocast:
        return _compare_with_reference(fn, device, dtype)


def _compare_with_reference(fn: Callable, device: torch.device, dtype: torch.dtype) -> bool:
    gen = torch.Generator().manual_seed(0)
    # a prompt of 3 tokens, then a response of 2 that also sees the prompt
    layout = PackedLayout.build(
        torch.tensor([0, 1, 2, 0, 1, 2, 3, 4]), ((0, 3), (3, 5)), ((0, 3), (3, 8)), device
    )
    q, k, v = (torch.randn(1, h, 5, 64, generator=gen) for h in (4, 2, 2))
    results = []
    for run in ("reference", "candidate"):
        qq, kk, vv = (t.to(device, torch.float32).requires_grad_() for t in (q, k, v))
        kg, vg = kk.index_select(2, layout.kv_index), vv.index_select(2, layout.kv_index)
        if run == "reference":
            out = _segment_attention(qq, kg, vg, layout, None, 0.0)[0].transpose(0, 1)
        else:
            args = [t.to(dtype)[0].transpose(0, 1) for t in (qq, kg, vg)]
            out = fn(*args, layout, None).float()
        out.square().sum().backward()
        results.append([out.detach(), qq.grad, kk.grad, vv.grad])
    return all(torch.allclose(a, b, atol=5e-2, rtol=5e-2) for a, b in zip(*results, strict=True))


def varlen_kernel(device: torch.device, dtype: torch.dtype) -> tuple[str, Callable] | None:
    """(name, function) of the first variable-length kernel that works here, or None
    (CPU, float32, or no candidate passes :func:`_probe`); decided once per device."""
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    key = (str(device), dtype)
    if key not in _chosen:
        _chosen[key] = None
        for name, fn in VARLEN_CANDIDATES.items():
            try:
                ok = _probe(fn, device, dtype)
            except Exception as exc:  # not installed, or not supported by this build
                log.info("varlen attention %s unavailable: %s", name, exc)
                continue
            if ok:
                _chosen[key] = (name, fn)
                break
            log.warning("varlen attention %s disagrees with the reference; not used", name)
    return _chosen[key]


def packed_attention(query, key, value, layout: PackedLayout, scale, dropout: float):
    """transformers' attention-function result, (1, N, Hq, d), for a packed micro-batch:
    query (1, Hq, N, d), key and value (1, Hkv, N, d) after rotary embeddings."""
    layout.calls += 1
    k, v = key, value
    if layout.kv_index is not None:  # each response also sees its prompt's keys
        k, v = key.index_select(2, layout.kv_index), value.index_select(2, layout.kv_index)
    kernel = varlen_kernel(query.device, query.dtype) if dropout == 0.0 else None
    if kernel is None:
        out = _segment_attention(query, k, v, layout, scale, dropout)
        return out.transpose(1, 2).contiguous()
    q, k, v = (t[0].transpose(0, 1) for t in (query, k, v))  # (tokens, heads, d)
    return kernel[1](q, k, v, layout, scale).unsqueeze(0)


# -- the packed forward ---------------------------------------------------------------------
def packing_problem(model: Any) -> str | None:
    """Why ``model`` cannot run packed micro-batches, or None when it can."""
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    if impl != NAME:
        return (
            f"its attention is {impl!r}; packing needs the model loaded with transformers' "
            f"'sdpa' attention, which cgrpo switches to {NAME!r}"
        )
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    kinds = set(getattr(text, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"} or getattr(text, "use_sliding_window", False):
        return f"it has attention layers other than full attention ({sorted(kinds)})"
    if getattr(text, "attention_dropout", 0.0):
        return "it uses attention dropout"
    if split_head(model) is None:
        return "its output layer is not a plain linear projection"
    return None


def require_packing(model: Any) -> None:
    """Raise a :class:`TrainingError` naming ``algorithm.micro_batch_tokens`` when ``model``
    cannot run packed micro-batches (:func:`packing_problem`)."""
    problem = packing_problem(model)
    if problem is not None:
        raise TrainingError(
            f"algorithm.micro_batch_tokens: {type(model).__name__} cannot run packed "
            f"micro-batches: {problem}. Remove micro_batch_tokens to use padded micro-batches"
        )


def _attention_layers(model: Any) -> int:
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.num_hidden_layers)


def forward_packed(
    model: Any,
    batch: PackedBatch,
    temperature: float,
    entropy: EntropyMode = "none",
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`cgrpo.model.logprobs.forward_response` for a packed micro-batch: (B, T)
    log-probs (and entropies) of its rows' response tokens, zeros on padding."""
    parts = split_head(model)
    if parts is None:
        raise ValueError("packed micro-batches need a plain linear output layer")
    decoder, head = parts
    device = next(model.parameters()).device
    layout = PackedLayout.of(batch, device)
    n = batch.input_ids.shape[0]
    inputs = {
        "input_ids": batch.input_ids.to(device).unsqueeze(0),
        "position_ids": batch.position_ids.to(device).unsqueeze(0),
        # a ready 4D "mask" (a view of one element): transformers builds no (N, N) mask
        "attention_mask": torch.ones((), dtype=torch.bool, device=device).expand(1, 1, n, n),
        "use_cache": False,
        PACKED_KEYWORD: layout,
    }
    if is_sharded(model):
        hidden = sharded_body(model, decoder, inputs)
    else:
        hidden = decoder(**inputs).last_hidden_state
    layers = _attention_layers(model)
    if layout.calls != layers:
        raise RuntimeError(
            f"{type(model).__name__}: {layout.calls} of {layers} attention layers used the "
            "packed layout; its attention ignores it. Unset algorithm.micro_batch_tokens"
        )
    selected = hidden[0].index_select(0, batch.predict_index.to(device))
    mask = batch.response_mask.to(device).bool()
    targets = batch.response_ids.to(device)[mask]
    lp, ent = chunked_token_stats(selected, targets, head, temperature, entropy, chunk_tokens)
    return rows_from_tokens(mask, lp, ent)
