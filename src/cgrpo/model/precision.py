"""Mixed precision: float32 master weights, bf16 compute.

``model.dtype`` is the *compute* dtype. What is kept in which precision:

=====================  ===========================  ===========================
                       ``model.dtype: float32``     ``model.dtype: bfloat16``
=====================  ===========================  ===========================
trainable parameters   float32                      float32 (master weights)
gradients              float32                      float32
AdamW moments          float32                      float32
forward / backward     float32                      bf16 matmuls under autocast
log-softmax, entropy   float32                      float32 (per chunk of tokens)
frozen copies (KL)     float32                      bfloat16
=====================  ===========================  ===========================

Why master weights: an AdamW step at the paper's lr 1e-6 moves a weight by about 1e-6,
while a bf16 weight of magnitude 0.02 moves in steps of 1.2e-4 (one ulp, 2^-13): an update
under half of that rounds away. Applied to bf16 weights, ~98% of a step's updates vanish,
silently, every step. The
field's answer (verl's FSDP mixed precision, torch AMP) is what this module does: keep the
parameters the optimizer updates in float32 and run the matmuls in bf16 under
``torch.autocast``. Autocast caches the bf16 cast of each weight for the length of one
autocast region, so a whole ``generate`` call or micro-batch forward casts every weight
once, not once per token.

float16 compute is refused at validation: it needs dynamic loss scaling to keep small
gradients from flushing to zero, which cgrpo does not implement.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MASTER_DTYPE = torch.float32


@dataclass(frozen=True)
class Precision:
    """The precision policy of the trainer's model.

    ``compute``: dtype of matmuls in forward and backward (``model.dtype``);
    ``device_type``: where autocast applies ('cuda' or 'cpu').
    """

    compute: torch.dtype = torch.float32
    device_type: str = "cpu"

    @classmethod
    def from_recipe(cls, dtype_name: str, device: torch.device | str) -> Precision:
        return cls(compute=DTYPES[dtype_name], device_type=torch.device(device).type)

    @property
    def master(self) -> torch.dtype:
        """dtype of trainable parameters, their gradients and the optimizer state."""
        return MASTER_DTYPE

    @property
    def mixed(self) -> bool:
        return self.compute != MASTER_DTYPE

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Run the enclosed forward passes in the compute dtype (a no-op for float32)."""
        if not self.mixed:
            yield
            return
        with torch.autocast(device_type=self.device_type, dtype=self.compute):
            yield


FULL = Precision()  # float32 everywhere: the default where no recipe says otherwise


def frozen_copy(model: torch.nn.Module, precision: Precision) -> torch.nn.Module:
    """A frozen, eval-mode copy of ``model`` in the compute dtype (e.g. the KL reference):
    it is never updated, so it needs no master precision."""
    import copy

    ref = copy.deepcopy(model).eval().requires_grad_(False)
    return ref.to(precision.compute) if precision.mixed else ref
