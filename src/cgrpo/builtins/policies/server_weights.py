"""How the trainer's weights reach the vLLM servers after each update
(``policy.options.weight_sync``).

- ``filesystem`` (default; works everywhere, CPU included): every rank drains the
  trainer's weights (an FSDP model is gathered one layer at a time, a collective), rank 0
  writes them as safetensors shards in the model's compute dtype to
  ``weights_dir/v<count>/``, and every server reloads them with the engine's own in-place
  ``reload_weights``. The previous version is deleted once every server has the new one;
  the current one stays, so a server that restarts mid-run is brought back to it.
- ``nccl`` (CUDA only): vLLM's own NCCL weight transfer engine (servers started with
  ``--weight-transfer-config '{"backend": "nccl"}'``): rank 0 broadcasts every tensor from
  its GPU to each server's workers, one NCCL group per server. Written against vLLM 0.32's
  documented API (``WeightTransferTrainerFactory``, ``HTTPVLLMWeightSyncClient``) and not
  run here (no GPU on the machines cgrpo is developed on); a server that restarts cannot
  rejoin its NCCL group and stays out of the pool until the run restarts.

Either way the swap around the load is the same (:func:`~cgrpo.builtins.policies.
server_protocol.swap_weights`): pause, load, reset the prefix cache, set the version,
resume.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cgrpo.builtins.policies.server_pool import EventLoopThread, Server, ServerFailed, ServerPool
from cgrpo.builtins.policies.server_protocol import (
    finish_swap,
    pause,
    reload_from,
    swap_weights,
)
from cgrpo.builtins.policies.vllm import trainer_weights
from cgrpo.errors import TrainingError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SHARD_BYTES = 2**30  # a shard file is written once this much is gathered


def write_safetensors(
    weights: Iterable[tuple[str, torch.Tensor]], target: Path, dtype: torch.dtype, write: bool
) -> None:
    """``weights`` as ``model-NNNNN.safetensors`` shards in ``target`` (created whole, then
    renamed into place: a reader never sees half a version). Every rank must drain
    ``weights`` (a collective under FSDP); only the one with ``write`` keeps them."""
    from safetensors.torch import save_file

    partial = target.with_name(target.name + ".partial")
    if write:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    shard: dict[str, torch.Tensor] = {}
    size, index, seen = 0, 0, set()
    for name, tensor in weights:
        if not write:
            continue
        t = tensor.detach().to("cpu", dtype).contiguous()
        if t.data_ptr() in seen:  # tied weights: safetensors refuses shared storage
            t = t.clone()
        seen.add(t.data_ptr())
        shard[name] = t
        size += t.numel() * t.element_size()
        if size >= SHARD_BYTES:
            save_file(shard, str(partial / f"model-{index:05d}.safetensors"), {"format": "pt"})
            shard, size, index, seen = {}, 0, index + 1, set()
    if write:
        if shard or index == 0:
            save_file(shard, str(partial / f"model-{index:05d}.safetensors"), {"format": "pt"})
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)


class FilesystemSync:
    """Weights through a directory every server reads (the default)."""

    name = "filesystem"

    def __init__(self, pool: ServerPool, loop: EventLoopThread, directory: Path, dtype):
        self.pool, self.loop, self.directory, self.dtype = pool, loop, directory, dtype
        self.current: Path | None = None

    def push(self, model: Any, tag: str, count: int, servers: list[Server], main: bool):
        """Write version ``count`` (every rank drains the weights) and, on rank 0, load it
        into ``servers``; returns (server, error) of those that failed. The first push
        clears versions a killed run left in the directory (it belongs to one run)."""
        target = self.directory / f"v{count}"
        if main and self.current is None:
            self.clear()
        write_safetensors(trainer_weights(model), target, self.dtype, write=main)
        if not main:
            return []
        previous, self.current = self.current, target
        results = self.loop.run(self._load_all(servers, tag))
        failures = [(s, r) for s, r in zip(servers, results, strict=True) if r is not None]
        if previous is not None and previous != target:
            shutil.rmtree(previous, ignore_errors=True)
        return failures

    async def _load_all(self, servers: list[Server], tag: str) -> list[Exception | None]:
        async def one(server: Server) -> Exception | None:
            try:
                await self.heal(server, tag)
            except (ServerFailed, TrainingError) as exc:
                return exc
            return None

        return list(await asyncio.gather(*(one(s) for s in servers)))

    async def heal(self, server: Server, tag: str) -> None:
        """Bring ``server`` to the current version (after a sync, or when it answered with
        older weights: restarted, or a reload that failed)."""
        if self.current is None:
            raise ServerFailed("no weights were written yet")
        path = str(self.current.resolve())
        await swap_weights(self.pool, server, tag, lambda s: reload_from(self.pool, s, path))

    def adopt(self, count: int) -> None:
        """Ranks other than 0 heal from the directory rank 0 wrote."""
        self.current = self.directory / f"v{count}"

    def clear(self) -> None:
        """Remove every version this directory holds (at the first push and at the end)."""
        if self.directory.is_dir():
            for old in self.directory.glob("v*"):
                if old.is_dir() and old.name.split(".")[0][1:].isdigit():
                    shutil.rmtree(old, ignore_errors=True)


class NcclSync:
    """vLLM's NCCL weight transfer, from rank 0's GPU to each server (CUDA only)."""

    name = "nccl"

    def __init__(self, pool: ServerPool, loop: EventLoopThread, options: Any, rank: int, dtype):
        import torch

        if not torch.cuda.is_available():
            raise TrainingError(
                "policy.options.weight_sync: nccl needs CUDA on the trainer and the servers; "
                "on this machine use weight_sync: filesystem (the default)"
            )
        self.pool, self.loop, self.options, self.rank, self.dtype = pool, loop, options, rank, dtype
        self.address = options.nccl_master_address or socket.getfqdn()
        self.engines: dict[str, Any] = {}

    def _engine(self, index: int, server: Server, model: Any) -> Any:
        """The trainer side of ``server``'s NCCL group, made at its first sync (every rank
        makes one; rank 0 is the sender and drives the server's routes)."""
        if server.url not in self.engines:
            from vllm.distributed.weight_transfer.clients import HTTPVLLMWeightSyncClient
            from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory
            from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

            workers = self.loop.run(self.pool.call(server, "GET", "/get_world_size"))
            info = NCCLTrainerInitInfo(
                master_address=self.address,
                master_port=self.options.nccl_port + index,
                world_size=1 + int(workers["world_size"]),
                rank=self.rank,
            )
            client = HTTPVLLMWeightSyncClient(server.url, timeout=self.options.request_timeout_s)
            self.engines[server.url] = WeightTransferTrainerFactory.trainer_init(
                info, client=client, source=_trainer_source(model, self.dtype)
            )
        return self.engines[server.url]

    def push(self, model: Any, tag: str, count: int, servers: list[Server], main: bool):
        """Every rank sends to every server in the same order (the gather under FSDP is a
        collective); rank 0 pauses, finishes and resumes each server around its send."""
        failures = []
        for index, server in enumerate(self.pool.servers):
            if server not in servers:
                continue
            engine = self._engine(index, server, model)
            try:
                if main:
                    self.loop.run(pause(self.pool, server))
                engine.send_weights()
                if main:
                    self.loop.run(finish_swap(self.pool, server, tag))
            except Exception as exc:  # the server leaves the pool; the run goes on
                failures.append((server, exc))
        return failures

    async def heal(self, server: Server, tag: str) -> None:
        raise ServerFailed(
            "it holds other weights than the trainer's and cannot rejoin its NCCL weight "
            "transfer group (restarted?); restart the run to take it back"
        )

    def adopt(self, count: int) -> None:
        return None

    def clear(self) -> None:
        return None


def _trainer_source(model: Any, dtype: torch.dtype) -> Any:
    """The trainer's weights as vLLM's ``WeightSource``: names and shapes from a first
    pass (the same order as every later pass), tensors cast to the servers' dtype."""
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

    class TrainerSource(WeightSource):
        def __init__(self) -> None:
            self.meta: list[ParamMeta] | None = None

        def metadata(self) -> list[ParamMeta]:
            if self.meta is None:  # a collective under FSDP: every rank runs it
                self.meta = [ParamMeta(n, dtype, tuple(t.shape)) for n, t in self]
            return self.meta

        def __iter__(self):
            for name, tensor in trainer_weights(model):
                yield name, tensor.to(dtype)

    return TrainerSource()
