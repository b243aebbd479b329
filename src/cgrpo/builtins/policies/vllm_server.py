"""``vllm-server``: rollouts from running vLLM OpenAI-compatible servers (``vllm serve``),
weights pushed to them after every update (docs/vllm-server.md).

- Sampling: each prompt is one request (token ids in; ``n`` samples with their token ids,
  log-probs and weight versions out) to the live server with the fewest requests in
  flight, so the servers share a step's prompts (data-parallel rollout). Every request has
  a seed (from torch's per-step RNG unless the loop gives one), so a sample depends on its
  seed and the weights only, whichever server draws it. ``generate_stream`` hands over
  groups as they finish. The per-group rollout (:class:`cgrpo.interfaces.
  AsyncPolicyBackend`) awaits ``sample_each`` for a group's samples, each handed over as it
  finishes (one request per sample, seeds seed + j: how vLLM splits a request for n seeded
  samples, so the tokens are ``sample``'s), and ``sample`` for each refinement; the
  requests go out as the groups make them and join whatever the servers are decoding.
- Faults: a server that refuses, drops or times out a request leaves the pool and the
  request goes to another one; the step fails, with each server's last error, only when
  none answers. The next weight sync checks every server again and reloads those that are
  back.
- Weight versions: every sync labels the servers' weights ``"<nonce>:<count>"``
  (:mod:`~cgrpo.builtins.policies.server_protocol`) and every sample comes back with the
  labels it was drawn under. A sample drawn under other weights (a server restarted from
  disk, a reload that failed, another trainer) is never used: its server is brought to the
  current weights (or leaves the pool) and the request is sent again. ``accept_lag``
  (0: on-policy) is how many versions back a sample may be; ``Completion.weight_version``
  is the count it was drawn under.
- Weight sync (``weight_sync``, :mod:`~cgrpo.builtins.policies.server_weights`), then a
  probe: every server samples a few tokens of one sequence at the recipe's temperature and
  their log-probs are compared with the trainer's (``policy/sync_logprob_diff_max``);
  above ``sync_tolerance`` the run stops. This checks the weights and the servers'
  ``--logprobs-mode`` at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import logging
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

from cgrpo.builtins.policies.server_launch import LocalServers
from cgrpo.builtins.policies.server_pool import (
    EventLoopThread,
    Server,
    ServerFailed,
    ServerPool,
)
from cgrpo.builtins.policies.server_probe import SyncProbe
from cgrpo.builtins.policies.server_protocol import (
    choice_versions,
    completions,
    describe,
    generate_on,
    sampling_body,
    tag_count,
    version_tag,
)
from cgrpo.builtins.policies.server_weights import FilesystemSync, NcclSync
from cgrpo.config.schema import VLLMServerOptions
from cgrpo.errors import TrainingError
from cgrpo.interfaces import StreamedGenerate
from cgrpo.model.loading import eos_token_ids
from cgrpo.types import Completion, SamplingParams

log = logging.getLogger(__name__)

PROBE_TEXT = "What is 2 + 3? The answer is \\boxed{5}."


class VLLMServerPolicy(StreamedGenerate):
    """Samples on vLLM servers; the trainer's weights are pushed to them after every update."""

    Options = VLLMServerOptions
    samples_with_trainer_model = False
    batches_continuously = True  # a request's tokens depend on its seed and the weights only

    def __init__(self, options: VLLMServerOptions, context: Any):
        if context is None or context.model is None or context.recipe is None:
            raise ValueError("the vllm-server backend needs the trainer's model and the recipe")
        import torch

        from cgrpo.model import distributed
        from cgrpo.model.precision import FULL

        recipe = context.recipe
        self.options, self.recipe = options, recipe
        self.model, self.tokenizer = context.model, context.tokenizer
        self.precision = context.precision or FULL
        self.eos_ids = eos_token_ids(self.model.generation_config, self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.nonce = secrets.token_hex(4)  # this trainer process's weight versions
        self.count, self.tag = 0, None  # syncs made; the current version's label
        self.accept_lag = 0  # how many versions back a sample may be (0: on-policy)
        self.last: tuple[list[int], list[int]] | None = None  # a sampled (prompt, response)
        self.stats: dict[str, float] = {}
        self.stale_answers = 0
        self._ids = itertools.count()
        self._first_sync = threading.Lock()
        self.ready = False
        self.local = None
        # the run directory (cgrpo eval has none: a directory of its own, removed at close)
        self.scratch = None if context.run_dir else Path(tempfile.mkdtemp(prefix="cgrpo-servers-"))
        here = Path(context.run_dir) if context.run_dir else self.scratch
        self.loop = EventLoopThread("cgrpo-vllm-server")
        self.pool, self.transport = self._connect(options, here)
        self.probe = SyncProbe(
            self.pool, self.loop, recipe, self.pad_id, self.precision, options.sync_tolerance
        )
        if options.launch is not None and distributed.is_main():  # one set for the whole job
            on_gpu = torch.cuda.is_available() and next(self.model.parameters()).is_cuda
            nccl = options.weight_sync == "nccl"
            self.local = LocalServers(options.launch, recipe, here / "servers", on_gpu, nccl)

    def _connect(self, options: VLLMServerOptions, here: Path) -> tuple[ServerPool, Any]:
        """The pool of servers and the weight transport (before any server is started, so
        a setting that fails here leaves nothing running)."""
        import torch

        from cgrpo.model import distributed

        urls = list(options.urls)
        if options.launch is not None:
            urls = [f"http://127.0.0.1:{p}" for p in options.launch.ports]
        pool = ServerPool(
            urls,
            request_timeout=options.request_timeout_s,
            max_inflight=options.max_inflight_per_server,
            api_key=_api_key(options.api_key_env),
        )
        dtype = getattr(torch, self.recipe.model.dtype)
        if options.weight_sync == "nccl":
            return pool, NcclSync(pool, self.loop, options, distributed.rank(), dtype)
        where = Path(options.weights_dir) if options.weights_dir else here / "server-weights"
        return pool, FilesystemSync(pool, self.loop, where, dtype)

    # -- connecting ------------------------------------------------------------------------
    def _ensure_ready(self) -> None:
        """Wait for the servers (the first time), check each can serve this run and log
        what it is: the run's record of where its samples came from."""
        if self.ready:
            return
        o = self.options
        alive = self.local.check_alive if self.local is not None else None
        log.info(
            "vllm-server: %d servers %s; weight sync %s%s; request timeout %.0f s, up to %d "
            "requests in flight per server",
            len(self.pool.servers),
            [s.url for s in self.pool.servers],
            self.transport.name,
            f" through {getattr(self.transport, 'directory', '')}"
            if o.weight_sync == "filesystem"
            else "",
            o.request_timeout_s,
            o.max_inflight_per_server,
        )
        self.loop.run(self.pool.wait_ready(o.startup_timeout_s, alive))
        self._describe_new()
        self.ready = True

    def _describe_new(self) -> None:
        """Check and log each live server not described yet (at the start, and a server
        that joins later)."""
        for server in self.pool.live():
            if server.info:
                continue
            try:
                info = self.loop.run(describe(self.pool, server, self.recipe.model.max_length))
            except ServerFailed as exc:
                self.pool.mark_dead(server, str(exc))
                continue
            log.info(
                "vllm-server: %s healthy: vLLM %s, model %s, context %d, weights %r",
                server.url,
                info["vllm"],
                info["model"],
                info["max_model_len"],
                info["weights"],
            )

    # -- sampling ----------------------------------------------------------------------------
    def _accepts(self, version: str) -> bool:
        count = tag_count(version, self.nonce)
        return count is not None and self.count - self.accept_lag <= count <= self.count

    async def _post(self, server: Server, body: dict[str, Any]) -> tuple[dict, Server]:
        body = {**body, "request_id": f"cgrpo-{self.nonce}-{next(self._ids)}"}
        return await generate_on(self.pool, server, body), server

    async def _sample(
        self, prompt: Sequence[int], params: SamplingParams, seed: int | None
    ) -> list[Completion]:
        """``params.n`` samples of ``prompt`` drawn under the current weights (or within
        ``accept_lag`` versions of them); see the module docstring for the retries."""
        body = sampling_body(prompt, params, seed, self.eos_ids)
        healed: set[str] = set()
        while True:
            answer, server = await self.pool.on_any(lambda s: self._post(s, body))
            versions = [choice_versions(c) for c in answer["choices"]]
            if not all(versions):
                raise TrainingError(
                    f"vLLM server {server.url} returned no weight versions with its samples; "
                    "cgrpo needs vLLM >= 0.32 on the servers"
                )
            stale = [v for vs in versions for v in vs if not self._accepts(v)]
            if not stale:
                oldest = min(tag_count(v, self.nonce) or 0 for vs in versions for v in vs)
                out = completions(answer, self.eos_ids, self._decode, oldest)
                if out and out[0].token_ids:
                    self.last = (list(prompt), out[0].token_ids)
                return out
            self.stale_answers += 1
            server.version = stale[0]
            if server.url in healed:
                self.pool.mark_dead(server, f"still answers with weights {stale[0]!r}")
            else:
                healed.add(server.url)
                await self._heal(server)

    async def _heal(self, server: Server) -> None:
        """Bring a server that answered with other weights to the current ones, or take it
        out of the pool; its samples are dropped either way."""
        held = server.version
        try:
            await self.transport.heal(server, self.tag)
        except (ServerFailed, TrainingError) as exc:
            self.pool.mark_dead(server, f"holds weights {held!r}, not {self.tag!r}: {exc}")
            return
        log.warning(
            "vllm-server: %s answered with weights %r instead of %r (restarted?); "
            "its samples were dropped and the current weights reloaded",
            server.url,
            held,
            self.tag,
        )

    def _ensure_synced(self) -> None:
        """Never synced (cgrpo eval; the loop syncs before its first step): the servers
        get the model's weights first."""
        with self._first_sync:
            if self.tag is None:
                self.sync_weights(self.model)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @property
    def weight_version(self) -> int:
        """Weight syncs made (the trainer sets it to the checkpoint's step when it resumes a
        run, before the first sync, so that versions count the run's updates)."""
        return self.count

    @weight_version.setter
    def weight_version(self, value: int) -> None:
        if self.tag is not None:  # the servers hold weights labelled with the old count
            raise TrainingError("vllm-server: weight_version is set before the first sync only")
        self.count = value

    def _submit(
        self, prompt_ids: Sequence[int], params: SamplingParams, seed: int | None
    ) -> asyncio.Future[list[Completion]]:
        """One request on the backend's loop, awaitable from the caller's."""
        return asyncio.wrap_future(self.loop.submit(self._sample(prompt_ids, params, seed)))

    async def sample(
        self, prompt_ids: Sequence[int], params: SamplingParams, seed: int | None = None
    ) -> list[Completion]:
        """``params.n`` completions of one prompt in one request (the asynchronous
        interface): it joins whatever the servers are decoding."""
        if self.tag is None:
            await asyncio.to_thread(self._ensure_synced)
        return await self._submit(prompt_ids, params, seed)

    async def sample_each(
        self, prompt_ids: Sequence[int], params: SamplingParams, seed: int | None = None
    ) -> AsyncIterator[tuple[int, Completion]]:
        """The ``params.n`` completions of one prompt as (index, completion), each as soon
        as it is done: n one-sample requests with seeds seed + j (vLLM runs a request for n
        seeded samples as exactly these), spread over the servers like any request. A
        caller that stops early cancels the requests still out (the servers abort them)."""
        import torch

        if self.tag is None:
            await asyncio.to_thread(self._ensure_synced)
        base = int(torch.randint(0, 2**31 - 1, (1,))) if seed is None else seed
        one = dataclasses.replace(params, n=1)
        index = {self._submit(prompt_ids, one, base + j): j for j in range(params.n)}
        pending = set(index)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for future in sorted(done, key=index.__getitem__):
                    yield index[future], future.result()[0]
        finally:
            for future in pending:
                future.cancel()

    def generate_stream(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> Iterator[list[tuple[int, list[Completion]]]]:
        """Every prompt's request goes out at once; groups are handed over as they finish.
        Closing the stream early cancels the requests still out (vLLM aborts them)."""
        import torch

        if not prompts:
            return
        self._ensure_synced()
        if seeds is None:  # from torch's RNG, which the loop reseeds every step
            seeds = torch.randint(0, 2**31 - 1, (len(prompts),)).tolist()
        futures = {
            self.loop.submit(self._sample(p, params, s)): i
            for i, (p, s) in enumerate(zip(prompts, seeds, strict=True))
        }
        pending = set(futures)
        try:
            while pending:
                done, pending = concurrent.futures.wait(
                    pending, return_when=concurrent.futures.FIRST_COMPLETED
                )
                yield sorted(((futures[f], f.result()) for f in done), key=lambda x: x[0])
        finally:
            for f in pending:
                f.cancel()

    # -- weights ------------------------------------------------------------------------------
    def sync_weights(self, model: Any) -> None:
        """Push the trainer's weights to every server that answers (the dead ones are asked
        again), label them with the next version, and probe that each agrees with the
        trainer. Fails only when no server took them."""
        from cgrpo.model import distributed

        self._ensure_ready()
        started = time.perf_counter()
        main = distributed.is_main()
        if main:
            self.loop.run(self.pool.refresh())
            self._describe_new()
        targets = distributed.broadcast([s.url for s in self.pool.live()])
        servers = [s for s in self.pool.servers if s.url in targets]
        count = self.count + 1
        tag = version_tag(self.nonce, count)
        failures = self.transport.push(model, tag, count, servers, main)
        for server, exc in failures:
            self.pool.mark_dead(server, f"weight sync failed: {exc}")
        live = distributed.broadcast([s.url for s in self.pool.live()])
        for server in self.pool.servers:
            server.alive = server.url in live
        if not live:
            raise TrainingError("weight sync: " + self.pool.none_answer())
        self.transport.adopt(count)
        self.count, self.tag = count, tag
        self.stats["sync_seconds"] = time.perf_counter() - started
        self.stats["servers_live"] = float(len(live))
        if self.options.sync_check:
            prompt = self.last[0] if self.last else self.tokenizer.encode(PROBE_TEXT)
            self.stats["sync_logprob_diff_max"] = self.probe.check(model, prompt, self.tag)

    # -- the rest of the backend contract -----------------------------------------------------
    def telemetry(self) -> dict[str, float]:
        """This step's figures (the counters restart every step)."""
        out = dict(self.stats)
        out.update(
            weight_version=float(self.count),
            requests_retried=float(self.pool.retried),
            stale_answers=float(self.stale_answers),
        )
        self.pool.retried = self.stale_answers = 0
        return out

    def close(self) -> None:
        """Stop the servers cgrpo started and remove the weight files it wrote."""
        from cgrpo.model import distributed

        if distributed.is_main():
            self.transport.clear()
        if self.loop is not None:
            self.loop.run(self.pool.aclose())
            self.loop.close()
            self.loop = None  # type: ignore[assignment]
        if self.local is not None:
            self.local.stop()
            self.local = None
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _api_key(env: str | None) -> str | None:
    import os

    if env is None:
        return None
    key = os.environ.get(env)
    if not key:
        raise TrainingError(f"policy.options.api_key_env: the environment variable {env} is unset")
    return key
