"""The hf backend's decode loop: prefill, then one forward per new token, on the device.

transformers' ``generate`` runs a general loop: logits processors, stopping criteria, a
host synchronisation per step to test whether every row has finished, and its own input
preparation per step. Sampling for RL needs little of it, and at a small model's scale that
Python is most of a decode step (a 2-layer model at batch 16 took 52 ms per step on an
H200 through ``generate`` and the old per-row sampler). Here one step is: the model's
forward of one token per row against the cache, the draw (:class:`.token_draw.TokenDraw`:
token and log-prob of every row at once), and writing both into preallocated (B, T)
buffers on the device. Whether every row has ended is asked of the device only every
``check_every`` steps (every step on CPU, where asking costs nothing): rows that ended
keep decoding padding until then, which costs a few steps at most.

Caches: transformers' ``DynamicCache`` (grows per step), or a ``StaticCache`` of the full
length allocated once, which :class:`CompiledDecode` needs for a CUDA-graph-captured
decode step (``torch.compile(mode="reduce-overhead")``). Rows are left-padded prompts; the
attention mask covers prompt padding, and position ids count real tokens only, as the
trainer's recompute does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from cgrpo.builtins.policies.token_draw import TokenDraw

log = logging.getLogger(__name__)


@dataclass
class Decoded:
    """What one decode call produced, on the CPU: ``tokens`` and ``logprobs`` (B, steps),
    padding after each row's end; ``lengths`` (B,) up to and including the first EOS;
    ``ended`` (B,) whether that EOS came; ``prompt_lengths`` (B,); ``positions``: the
    positions the model computed, rows x (prompt width + steps)."""

    tokens: torch.Tensor
    logprobs: torch.Tensor
    lengths: torch.Tensor
    ended: torch.Tensor
    prompt_lengths: torch.Tensor
    positions: int

    @property
    def real(self) -> int:
        """Real tokens among the positions: each row's prompt and sampled tokens."""
        return int(self.prompt_lengths.sum()) + int(self.lengths.sum())

    def first(self, rows: int) -> Decoded:
        """The first ``rows`` rows (the positions computed for the others still count)."""
        return Decoded(
            self.tokens[:rows],
            self.logprobs[:rows],
            self.lengths[:rows],
            self.ended[:rows],
            self.prompt_lengths[:rows],
            self.positions,
        )


Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], torch.Tensor]


def eager_forward(model: Any) -> Forward:
    """(input ids, attention mask, position ids, cache) -> the last position's logits."""

    def forward(ids, mask, positions, cache):
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1]

    return forward


def dynamic_cache(model: Any, rows: int, length: int) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def static_cache(model: Any, rows: int, length: int) -> Any:
    from transformers import StaticCache

    return StaticCache(config=model.config, max_cache_len=length)


def decode(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    draw: TokenDraw,
    eos_ids: list[int],
    pad_id: int,
    *,
    cache: Any = None,
    step: Forward | None = None,
    check_every: int = 1,
) -> Decoded:
    """Decode up to ``max_new_tokens`` tokens for each left-padded row of ``input_ids``
    (B, W), on the model's device. ``cache``: an empty transformers cache (a
    ``DynamicCache`` by default; a ``StaticCache`` gets the full-length mask every step);
    ``step``: the forward of the decode steps (the prefill is always eager)."""
    device = next(model.parameters()).device
    rows, width = input_ids.shape
    static = cache is not None and getattr(cache, "is_compileable", False)
    cache = cache if cache is not None else dynamic_cache(model, rows, width + max_new_tokens)
    total = _cache_length(cache) if static else width + max_new_tokens
    if total < width + max_new_tokens:
        raise ValueError(f"a cache of {total} positions cannot hold {width} + {max_new_tokens}")
    prefill = eager_forward(model)
    step = step or prefill
    # a static cache attends over all its positions: the mask covers them (zeros ahead)
    mask = torch.zeros(rows, total, dtype=torch.long, device=device)
    mask[:, :width] = attention_mask.to(device)
    positions = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
    logits = prefill(input_ids.to(device), mask if static else mask[:, :width], positions, cache)
    position = positions[:, -1:]
    tokens = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((rows, max_new_tokens), dtype=torch.float32, device=device)
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    steps = max_new_tokens
    for t in range(max_new_tokens):
        token, logprob = draw(logits, t)
        token = token.masked_fill(done, pad_id)  # rows that ended take padding
        tokens[:, t] = token
        logprobs[:, t] = logprob.masked_fill(done, 0.0)
        done = done | torch.isin(token, eos)
        if t + 1 == max_new_tokens or ((t + 1) % check_every == 0 and bool(done.all())):
            steps = t + 1
            break
        mask[:, width + t] = 1
        position = position + 1
        seen = mask if static else mask[:, : width + t + 1]
        # one query per row sees every real key so far: the 4D mask is the 2D one, ready
        # (transformers then builds none, and reads nothing back from the device)
        logits = step(token.unsqueeze(-1), seen[:, None, None, :].bool(), position, cache)
    return _finish(tokens[:, :steps], logprobs[:, :steps], attention_mask, eos_ids)


def _cache_length(cache: Any) -> int:
    """The positions a static cache holds (the method's name changed in transformers 5)."""
    for name in ("get_max_length", "get_max_cache_shape"):
        method = getattr(cache, name, None)
        if callable(method):
            return int(method())
    raise TypeError(f"{type(cache).__name__} does not say how many positions it holds")


def _finish(tokens, logprobs, attention_mask, eos_ids) -> Decoded:
    """Bring a decode's buffers to the CPU (one copy each, made outside inference mode so
    that autograd may save them later) and find each row's end."""
    with torch.inference_mode(False):
        tokens = tokens.to("cpu", copy=True)
        logprobs = logprobs.to("cpu", torch.float32, copy=True)
    is_eos = torch.isin(tokens, torch.tensor(eos_ids, dtype=tokens.dtype))
    ended = is_eos.any(dim=1)
    lengths = torch.where(ended, is_eos.int().argmax(dim=1) + 1, tokens.shape[1])
    rows, width = attention_mask.shape
    return Decoded(
        tokens=tokens,
        logprobs=logprobs,
        lengths=lengths,
        ended=ended,
        prompt_lengths=attention_mask.sum(dim=1).cpu(),
        positions=rows * (width + tokens.shape[1]),
    )


class CompiledDecode:
    """A CUDA-graph-captured decode step (``torch.compile(mode="reduce-overhead")``) over
    static caches, kept between calls and reset, one per (rows, length), so each shape is
    compiled and captured once. CUDA only (validation and the backend refuse it on CPU)."""

    def __init__(self, model: Any):
        self.model = model
        self.step = torch.compile(eager_forward(model), mode="reduce-overhead", dynamic=False)
        self.caches: dict[tuple[int, int], Any] = {}

    def cache(self, rows: int, length: int) -> Any:
        key = (rows, length)
        if key not in self.caches:
            self.caches[key] = static_cache(self.model, rows, length)
        else:
            self.caches[key].reset()
        return self.caches[key]
