"""FSDP2 (``distributed.strategy: fsdp``): parameters, gradients and AdamW state sharded
over the ranks, on PyTorch's own engine (``torch.distributed.fsdp.fully_shard``).

What a rank holds: 1/world of the float32 master weights, of their gradients and of the
AdamW moments (Qwen3-8B over 8 ranks: ~16 GB instead of ~131 GB), plus, for the length of
one layer's forward or backward, that layer's full weights in the compute dtype.

How the pieces fit the loop:

- One FSDP unit per decoder layer, plus the root (embeddings, final norm, output layer).
  Mixed precision is FSDP's own policy: float32 sharded parameters (the master weights),
  all-gathered in the compute dtype (bf16), gradients reduce-scattered in float32.
- Gradients are *summed* over ranks, not averaged: each rank's loss is already its share
  of the global loss (global token / sequence counts, as for ddp), so the sum of the
  shares is the single-process gradient. Only sum reductions are used (gloo has no
  pre-multiplied sum).
- Every rank must make the same number of forward and backward calls (each one
  all-gathers): the update pads a rank's micro-batches with zero-weight copies up to the
  largest count (:func:`cgrpo.train.update.update_policy`).
- Sampling with the training model (the ``hf`` backend, the self critic, evaluation) runs
  inside :func:`gathered`: the whole model is all-gathered once, in the compute dtype, and
  ``generate`` then makes no collective calls at all. Ranks may then call it any number of
  times (refinement counts differ per rank; rank 0 alone evaluates), and decoding does not
  all-gather every layer for every token. The cost is one full compute-dtype copy of the
  weights during sampling (16.4 GB for an 8B model), the same as a colocated engine's.
- :func:`full_weights` hands a consumer (the vLLM engine) the full weights one FSDP unit
  at a time: never more than one layer's full weights beyond the shards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


def is_sharded(model: Any) -> bool:
    """True for a model whose parameters FSDP2 manages."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The decoder layers of a transformers causal LM (the FSDP units)."""
    decoder = model.get_decoder() if callable(getattr(model, "get_decoder", None)) else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise ValueError(
            f"{type(model).__name__} has no decoder.layers list; distributed.strategy=fsdp "
            "supports transformers causal LMs whose decoder holds its blocks in .layers"
        )
    return list(layers)


def shard_model(model: torch.nn.Module, compute_dtype: torch.dtype) -> torch.nn.Module:
    """Shard ``model`` in place over the default process group and return it.

    ``compute_dtype``: dtype the weights are all-gathered in (bf16 for mixed precision);
    the shards keep the dtype they have (float32 masters; a frozen bf16 copy stays bf16)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    own = next(model.parameters()).dtype
    policy = MixedPrecisionPolicy(
        param_dtype=None if compute_dtype == own else compute_dtype,
        reduce_dtype=torch.float32,
    )
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    for unit in units(model):
        unit.set_gradient_divide_factor(1.0)  # sum, do not average (see the module doc)
        unit.set_force_sum_reduction_for_comms(True)
    return model


def units(model: Any) -> list[Any]:
    """Every FSDP unit of ``model`` (decoder layers first, the root last)."""
    from torch.distributed.fsdp import FSDPModule

    found = [m for m in model.modules() if isinstance(m, FSDPModule)]
    return [m for m in found if m is not model] + ([model] if model in found else [])


@contextlib.contextmanager
def gathered(model: Any) -> Iterator[None]:
    """Inside, ``model`` holds its full weights (compute dtype) on every rank and its
    forward calls make no collective calls; outside, it is sharded again. A no-op for a
    model that is not sharded. Every rank must enter it (the gather is collective)."""
    if not is_sharded(model):
        yield
        return
    parts = units(model)
    for unit in parts:
        unit.unshard()
    model.set_reshard_after_forward(False)  # recurses into the layers
    try:
        yield
    finally:
        model.set_reshard_after_forward(True)
        for unit in parts:
            unit.reshard()


def full_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """``(state-dict name, full tensor)`` of every weight, gathered one FSDP unit at a
    time in the compute dtype; every rank must drain the iterator (collective). For a
    model that is not sharded, its state dict."""
    if not is_sharded(model):
        for name, tensor in model.state_dict().items():
            yield name, tensor.detach()
        return
    wanted = set(model.state_dict().keys())  # shards only: nothing is gathered here
    layer_units = units(model)[:-1]
    layers = {name + ".": m for name, m in model.named_modules() if m in layer_units}
    for prefix, unit in [*layers.items(), ("", model)]:
        unit.unshard()  # the root's unshard gathers only its own parameters
        try:
            for name, tensor in _named_tensors(unit, prefix):
                inner = prefix == "" and any(name.startswith(p) for p in layers)
                if name in wanted and not inner:
                    yield name, tensor.detach()
        finally:
            unit.reshard()


def _named_tensors(module: torch.nn.Module, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Parameters (tied ones under each of their names) and buffers of ``module``."""
    yield from module.named_parameters(prefix=prefix.rstrip("."), remove_duplicate=False)
    yield from module.named_buffers(prefix=prefix.rstrip("."), remove_duplicate=False)


def grad_norm_value(norm: torch.Tensor) -> float:
    """A float from :func:`torch.nn.utils.clip_grad_norm_`'s result (a DTensor under
    FSDP: the norm over every rank's shard)."""
    full = getattr(norm, "full_tensor", None)
    return float(full() if callable(full) else norm)


def sampling_weights(policy: Any, model: Any):
    """Context for sampling with ``policy``: the sharded ``model`` gathered whole first
    when the policy samples with it (the ``hf`` backend), so ``generate`` makes no
    collective calls; nothing to do otherwise."""
    if getattr(policy, "samples_with_trainer_model", False):
        return gathered(model)
    return contextlib.nullcontext()
