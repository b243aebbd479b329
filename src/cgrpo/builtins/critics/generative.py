"""``self`` and ``local``: chain-of-thought critiques written by a language model on this
machine, all critiques of a step in one batched generation pass.

``self`` uses the training policy through the policy backend (self-critique). ``local``
loads a separate, frozen critic model (weak-to-strong when it is smaller than the policy)
that is never weight-synced with the policy.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from cgrpo.builtins.critics.options import CoTOptions
from cgrpo.builtins.critics.prompts import parse_verdict, resolve_template
from cgrpo.builtins.critics.rule import ground_truth_text
from cgrpo.types import Critique, CritiqueRequest, SamplingParams


class _GenerativeCritic:
    name = "generative"

    def __init__(self, options: CoTOptions, sampler: Any, tokenizer: Any):
        self.options = options
        self.sampler = sampler
        self.tokenizer = tokenizer
        self.template = resolve_template(options.template, options.template_text, options.system)

    def _prompt_ids(self, request: CritiqueRequest) -> list[int]:
        messages = self.template.messages(request)
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        else:
            text = "\n\n".join(m["content"] for m in messages) + "\n\n"
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _generate(self, requests: Sequence[CritiqueRequest]) -> tuple[list[str], float]:
        params = SamplingParams(
            n=1,
            temperature=max(self.options.temperature, 1e-5),
            max_new_tokens=self.options.max_tokens,
            greedy=self.options.temperature == 0.0,
        )
        started = time.perf_counter()
        out = self.sampler.generate([self._prompt_ids(r) for r in requests], params)
        return [g[0].text for g in out], time.perf_counter() - started

    def critique(self, requests: Sequence[CritiqueRequest]) -> list[Critique]:
        if not requests:
            return []
        texts, seconds = self._generate(requests)
        per = seconds / len(requests)
        results = [self._critique(r, t, per) for r, t in zip(requests, texts, strict=True)]
        if self.options.on_disagreement == "retry":
            redo = [i for i, c in enumerate(results) if c.error == "disagreement"]
            if redo:
                again, seconds = self._generate([requests[i] for i in redo])
                for i, text in zip(redo, again, strict=True):
                    results[i] = self._critique(requests[i], text, seconds / len(redo))
        return results

    def _critique(self, request: CritiqueRequest, text: str, seconds: float) -> Critique:
        verdict = parse_verdict(text)
        disagrees = verdict is not None and verdict != request.verdict.correct
        if disagrees and self.options.on_disagreement == "fallback":
            return Critique(
                ground_truth_text(request.verdict.correct, request.problem.answer),
                self.name,
                fallback=True,
                error="disagreement",
                critic_verdict=verdict,
                latency_s=seconds,
            )
        return Critique(
            text.strip(),
            self.name,
            error="disagreement" if disagrees else None,
            critic_verdict=verdict,
            completion_tokens=len(self.tokenizer.encode(text)),
            latency_s=seconds,
        )


class SelfCritic(_GenerativeCritic):
    """The training policy critiques its own responses (chain of thought, one batched pass)."""

    name = "self"
    needs_policy = True
    Options = CoTOptions

    def __init__(self, options: CoTOptions, context: Any):
        if context is None or context.policy is None or context.tokenizer is None:
            raise ValueError("the self critic needs the policy backend and tokenizer")
        super().__init__(options, context.policy, context.tokenizer)


class LocalCriticOptions(CoTOptions):
    path: str = Field(description="local directory (or hub id) of the critic model")
    backend: Literal["hf", "vllm"] = Field(
        "hf", description="'hf' (transformers) or 'vllm' (a second, frozen vLLM engine)"
    )
    max_model_len: int = Field(4096, ge=64, description="vllm: longest critic sequence")
    gpu_memory_utilization: float = Field(
        0.2, gt=0, le=1, description="vllm on GPU: memory share of the critic's engine"
    )
    kv_cache_memory_bytes: int | None = Field(
        None, ge=1, description="vllm: KV cache bytes (CPU default 512 MiB)"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="dtype")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda:1', ...")
    batch_size: int = Field(
        32, ge=1, description="hf: critiques generated per generate() call (vLLM batches itself)"
    )

    @field_validator("path")
    @classmethod
    def _local_path_exists(cls, v: str) -> str:
        """A path that is meant to be local (/, ., ~) must exist: a placeholder such as the
        weak-to-strong recipe's /path/to/small-instruct-model is caught by ``check``."""
        if v.startswith((".", "/", "~")) and not Path(v).expanduser().is_dir():
            raise ValueError(
                f"critic model directory not found: {v}; give the small critic model's "
                "directory (or a hub id reachable from this machine)"
            )
        return v

    def ignored_settings(self) -> dict[str, str]:
        out = super().ignored_settings()
        if self.backend == "hf":
            for name in ("max_model_len", "gpu_memory_utilization", "kv_cache_memory_bytes"):
                out[name] = "is a vLLM engine setting (backend: hf); set backend: vllm or remove it"
        else:
            out["batch_size"] = ("has no effect with backend: vllm (the engine batches all "
                                 "requests itself); remove it")  # fmt: skip
            if self.device not in ("auto", "cpu", "cuda"):
                out["device"] = (
                    f"{self.device!r} cannot be honoured with backend: vllm (the engine runs on "
                    "the process's current GPU); use auto, cpu or cuda, and choose the GPU "
                    "with CUDA_VISIBLE_DEVICES"
                )
        return out


class LocalCritic(_GenerativeCritic):
    """A separate frozen critic model (e.g. weak-to-strong); never synced with the policy."""

    name = "local"
    Options = LocalCriticOptions

    def __init__(self, options: LocalCriticOptions, context: Any = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from cgrpo.builtins.policies.hf import HFPolicy
        from cgrpo.interfaces import BuildContext
        from cgrpo.model.attention import use_cgrpo_sdpa
        from cgrpo.model.loading import resolve_device

        tokenizer = AutoTokenizer.from_pretrained(options.path)
        if options.backend == "vllm":
            super().__init__(options, self._vllm_sampler(options, tokenizer), tokenizer)
            self.model = None  # the engine holds the only copy of the weights
            return
        model = AutoModelForCausalLM.from_pretrained(
            options.path, dtype=getattr(torch, options.dtype)
        )
        model.to(resolve_device(options.device)).eval().requires_grad_(False)
        use_cgrpo_sdpa(model)  # its critiques have long prompts: padding masks every batch
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        sampler = HFPolicy(
            HFPolicy.Options(generation_batch_size=options.batch_size),
            BuildContext(model=model, tokenizer=tokenizer),
        )
        super().__init__(options, sampler, tokenizer)
        self.model = model

    def close(self) -> None:
        """Release the critic's own model or engine (a ``self`` critic owns neither)."""
        if self.sampler is not None:
            self.sampler.close()
        self.sampler = self.model = None

    @staticmethod
    def _vllm_sampler(options: LocalCriticOptions, tokenizer: Any) -> Any:
        import torch
        from transformers import GenerationConfig

        from cgrpo.builtins.policies.vllm import VLLMSampler
        from cgrpo.model.loading import eos_token_ids

        try:
            generation_config = GenerationConfig.from_pretrained(options.path)
        except OSError:  # a model without generation_config.json: the tokenizer's EOS only
            generation_config = None
        eos_ids = eos_token_ids(generation_config, tokenizer)
        on_gpu = torch.cuda.is_available() and options.device != "cpu"
        return VLLMSampler(
            options.path,
            tokenizer,
            eos_ids,
            dtype=options.dtype,
            max_model_len=options.max_model_len,
            seed=0,
            on_gpu=on_gpu,
            gpu_memory_utilization=options.gpu_memory_utilization,
            kv_cache_memory_bytes=options.kv_cache_memory_bytes,
        )
