"""Several processes with ``torchrun`` (torch.distributed): the few collective operations
the loop needs, and no-ops when there is only one process.

Each rank samples, verifies and critiques its own share of a step's prompts (groups never
straddle ranks). Each rank's loss is normalised by *global* token / sequence counts, so
the *sum* of the ranks' gradients is exactly the single-process gradient: gradients are
summed with one all-reduce per step, then clipped identically on every rank, which keeps
the replicas equal without a DDP wrapper (and copes with ranks whose micro-batch counts
differ). Rank 0 writes metrics, samples and checkpoints.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def launched_with_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def setup(backend: str = "auto", strategy: str = "ddp") -> None:
    """Join the process group torchrun describes. A single process needs none, except
    under fsdp, which then runs in a process group of one (nothing is sharded, but the
    code path and the checkpoint format are those of the multi-process run)."""
    if dist.is_initialized():
        return
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if launched_with_torchrun():
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    elif strategy == "fsdp":
        if backend == "nccl":
            torch.cuda.set_device(0)
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def local_device() -> str | None:
    """'cuda:LOCAL_RANK' when each rank owns a GPU, else None (use the recipe's device)."""
    if active() and torch.cuda.is_available():
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return None


def _reduce_scalar(value: float, op: Any) -> float:
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=op)
    return float(t.item())


def sum_scalar(value: float) -> float:
    """The sum of ``value`` over the ranks."""
    return _reduce_scalar(value, dist.ReduceOp.SUM)


def max_scalar(value: float) -> float:
    """The largest ``value`` over the ranks."""
    return _reduce_scalar(value, dist.ReduceOp.MAX)


def all_reduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum gradients over ranks in one flattened all-reduce (missing grads count as 0)."""
    if not active():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` for one process)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()
