"""The memory plan: what one GPU will hold, from the recipe and the model's config.json
alone (no weights loaded, no torch imported), so ``cgrpo check`` and ``cgrpo run`` can say
"this does not fit, and here is what would" before anything is loaded.

Two phases peak separately, and the plan takes the larger:

* sampling: the training state that persists between steps (weights, AdamW moments,
  the KL reference) plus the sampler: the ``vllm`` engine's share of the GPU, or for the
  ``hf`` backend the KV cache, one step's logits and the compute-dtype copy of the weights
  (autocast's cast cache, or FSDP's gathered weights);
* update: the persistent state plus gradients, the activations of one micro-batch (with
  or without gradient checkpointing), the chunked output-layer buffers, the compute-dtype
  weight copies in flight, and whatever the engine keeps while the update runs (nothing
  when it sleeps).

Per-token activation bytes are counted from what autograd saves in a Qwen/Llama-style
decoder layer (RMSNorm in float32 over a float32 residual stream, q/k/v/o, rotary, SDPA,
gated MLP). The CPU test checks the estimate against measured peaks (within 30%); the GPU
check prints estimate vs measured. It is an estimate: ``run.memory_check: warn`` lets a
run go ahead when the plan says it will not fit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

GIB = 2**30
CUDA_RUNTIME = 1.5 * GIB  # CUDA context, cuBLAS workspaces, allocator slack
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs from a transformers config.json."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool
    qkv_bias: bool = False
    qk_norm: bool = False  # Qwen3 normalises q and k per head

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> ModelShape:
        text = cfg.get("text_config") or cfg
        hidden, heads = int(text["hidden_size"]), int(text["num_attention_heads"])
        bias = text.get("attention_bias")
        return cls(
            vocab=int(text["vocab_size"]),
            hidden=hidden,
            layers=int(text["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(text.get("num_key_value_heads") or heads),
            head_dim=int(text.get("head_dim") or hidden // heads),
            intermediate=int(text["intermediate_size"]),
            tied=bool(cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
            qkv_bias=bool(bias) if bias is not None else text.get("model_type") == "qwen2",
            qk_norm=str(text.get("model_type", "")).startswith("qwen3"),
        )

    def layer_linears(self) -> list[tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer."""
        h, q, kv, i = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        )
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    @property
    def layer_params(self) -> int:
        linear = sum(a * b for a, b in self.layer_linears())
        bias = (self.heads + 2 * self.kv_heads) * self.head_dim if self.qkv_bias else 0
        qk_norms = 2 * self.head_dim if self.qk_norm else 0
        return linear + bias + 2 * self.hidden + qk_norms

    @property
    def root_params(self) -> int:
        """Embeddings, final norm and output layer (the FSDP root unit)."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + self.root_params

    def activation_bytes_per_token(self, compute_bytes: int) -> int:
        """Bytes autograd keeps per token for one decoder layer's backward: each RMSNorm's
        float32 input and normalised output; under mixed precision the compute-dtype casts
        of the two normalised inputs; rotated q, k and v repeated to every query head,
        the attention output and o_proj's input; gate, up, their activation and product.
        (Rotary's inputs and the un-repeated k, v are not saved.)"""
        h, c, q, i = self.hidden, compute_bytes, self.heads * self.head_dim, self.intermediate
        norms = 2 * 2 * 4 * h
        casts = 2 * h * c if c != 4 else 0
        attention = 5 * q * c
        mlp = 4 * i * c
        return norms + casts + attention + mlp

    def lora_params(self, r: int, targets: Any) -> int:
        names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        chosen = names if targets == "all-linear" else [n for n in names if n in set(targets)]
        per_layer = sum(
            r * (a + b)
            for n, (a, b) in zip(names, self.layer_linears(), strict=True)
            if n in chosen
        )
        return self.layers * per_layer


@dataclass
class Plan:
    """Bytes per GPU, phase by phase, and the verdict against the GPU's memory."""

    lines: list[tuple[str, float, float]]  # (what, sampling bytes, update bytes)
    gpus: int
    gpu_memory: float | None
    notes: list[str] = field(default_factory=list)
    on_gpu: bool = True  # False: one CPU process's memory (a CPU run)

    @property
    def sampling(self) -> float:
        return sum(s for _, s, _ in self.lines)

    @property
    def update(self) -> float:
        return sum(u for _, _, u in self.lines)

    @property
    def peak(self) -> float:
        return max(self.sampling, self.update)

    @property
    def fits(self) -> bool | None:
        return None if self.gpu_memory is None else self.peak <= self.gpu_memory

    def render(self, title: str = "memory plan") -> str:
        """The plan as a table, in GiB (MiB when it peaks under 1 GiB: a tiny CPU model's
        plan would be all 0.0)."""
        unit, scale = ("GiB", GIB) if self.peak >= GIB else ("MiB", 2**20)
        size = lambda b: f"{b / scale:8.1f}"  # noqa: E731
        where = f"per GPU ({self.gpus} GPU{'s' if self.gpus > 1 else ''})"
        out = [f"{title}, {where if self.on_gpu else 'a CPU run (one process, no GPU)'}:"]
        out.append(f"  {'':46} {'sampling':>8} {'update':>8}  {unit}")
        for what, s, u in self.lines:
            out.append(f"  {what:46} {size(s)} {size(u)}")
        out.append(f"  {'total':46} {size(self.sampling)} {size(self.update)}")
        if self.gpu_memory is not None:
            verdict = "fits" if self.fits else "does NOT fit"
            out.append(
                f"  peak {self.peak / GIB:.1f} GiB of {self.gpu_memory / GIB:.1f} GiB: {verdict}"
            )
        out += [f"  note: {n}" for n in self.notes]
        return "\n".join(out)


@dataclass(frozen=True)
class Setup:
    """The recipe settings the plan depends on (changed one at a time to find fixes)."""

    strategy: str
    gpus: int
    compute: str
    lora_r: int | None
    lora_targets: Any
    kl: bool
    checkpointing: bool
    micro_tokens: int
    chunk_tokens: int
    backend: str
    generation_batch: int
    sample_len: int
    vllm_fraction: float
    vllm_sleep: int
    packed: bool = False  # algorithm.micro_batch_tokens is set

    @classmethod
    def from_recipe(cls, recipe: Any, gpus: int) -> Setup:
        a, m = recipe.algorithm, recipe.model
        tokens = a.micro_batch_size * m.max_length
        if a.max_tokens_per_micro_batch is not None:
            tokens = min(tokens, a.max_tokens_per_micro_batch)
        if a.micro_batch_tokens is not None:  # packed: no padding, at most this many
            tokens = a.micro_batch_tokens
        # a dict: defaults filled by validation, or raw (partial_recipe); the fallbacks
        # are the hf / vllm backends' defaults, also assumed for a plugin backend
        opts = recipe.policy.options or {}
        return cls(
            strategy=recipe.distributed.strategy,
            gpus=gpus,
            compute=m.dtype,
            lora_r=m.lora.r if m.lora is not None else None,
            lora_targets=m.lora.target_modules if m.lora is not None else None,
            kl=a.loss.kl_coef > 0,
            checkpointing=m.gradient_checkpointing,
            micro_tokens=tokens,
            chunk_tokens=a.logprob_chunk_tokens,
            backend=recipe.policy.name,
            generation_batch=int(opts.get("generation_batch_size", 64)),
            sample_len=m.max_length,
            vllm_fraction=float(opts.get("gpu_memory_utilization", 0.5)),
            vllm_sleep=int(opts.get("sleep_level", 1)),
            packed=a.micro_batch_tokens is not None,
        )


Line = tuple[str, float, float]  # (what, bytes while sampling, bytes during the update)


def estimate(shape: ModelShape, s: Setup, gpu_memory: float | None, on_gpu: bool = True) -> Plan:
    """The plan of one GPU (or, with ``on_gpu=False``, of one CPU process: no CUDA runtime,
    no engine sleep)."""
    lines, trainable_copy = _training_state(shape, s)
    lines += _micro_batch(shape, s)
    notes: list[str] = []
    lines += _sampler(shape, s, gpu_memory, on_gpu, trainable_copy, notes)
    if on_gpu:
        lines.append(("CUDA runtime and allocator slack", CUDA_RUNTIME, CUDA_RUNTIME))
    return Plan(lines, s.gpus, gpu_memory, notes, on_gpu)


def _training_state(shape: ModelShape, s: Setup) -> tuple[list[Line], float]:
    """Weights, optimizer moments, gradients (and the KL reference), and the bytes of the
    compute-dtype copy of the trainable weights that sampling holds too (0 when none)."""
    c, p = DTYPE_BYTES[s.compute], shape.params
    shard = s.gpus if s.strategy == "fsdp" else 1
    if s.lora_r is not None:
        adapters = shape.lora_params(s.lora_r, s.lora_targets)
        return [
            (f"frozen base weights ({s.compute})", p * c, p * c),
            ("LoRA adapters (float32)", adapters * 4, adapters * 4),
            ("AdamW moments (float32)", adapters * 8, adapters * 8),
            ("gradients (float32)", 0, adapters * 4),
        ], 0.0
    per = f", 1/{shard} each" if shard > 1 else ""
    lines: list[Line] = [
        (f"weights (float32 masters{per})", p * 4 / shard, p * 4 / shard),
        (f"AdamW moments (float32{per})", p * 8 / shard, p * 8 / shard),
        (f"gradients (float32{per})", 0, p * 4 / shard),
    ]
    if s.kl:
        lines.append((f"KL reference ({s.compute}{per})", p * c / shard, p * c / shard))
    if shard > 1:  # the root stays gathered through forward+backward; ~2 layers in flight
        gathered = (shape.root_params + 2 * shape.layer_params) * c
        grads = (shape.root_params + shape.layer_params) * 4
        lines.append(("FSDP gathered root + 2 layers, their grads", 0, gathered + grads))
        return lines, p * c  # hf sampling gathers the whole model
    if s.compute != "float32":  # autocast keeps the cast of every weight for the micro-batch
        lines.append((f"autocast {s.compute} weight copies", 0, p * c))
        return lines, p * c  # ... and for a whole generate call
    return lines, 0.0


def _micro_batch(shape: ModelShape, s: Setup) -> list[Line]:
    """The activations of one micro-batch and the output layer's chunked logits."""
    c, t = DTYPE_BYTES[s.compute], s.micro_tokens
    per_layer = shape.activation_bytes_per_token(c)
    residual = 4 * shape.hidden  # float32 residual stream between layers
    if s.checkpointing:
        act, what = (
            shape.layers * t * residual + t * per_layer,
            f"activations, {t} tokens, checkpointed",
        )
    else:
        act, what = shape.layers * t * per_layer, f"activations, {t} tokens"
    head = 3 * min(s.chunk_tokens, t) * shape.vocab * 4 + t * shape.hidden * 4
    return [(what, 0, act), (f"output layer, chunks of {s.chunk_tokens} tokens", 0, head)]


def _sampler(shape, s: Setup, gpu_memory, on_gpu, trainable_copy, notes) -> list[Line]:
    """The vLLM engine's share of the GPU, or the hf sampler's KV cache and logits."""
    if s.backend == "vllm-server":  # the weight sync gathers one layer at a time
        return [("sampling: on the vLLM servers, not on this GPU", 0, 0)]
    if s.backend == "vllm" and on_gpu:
        engine = s.vllm_fraction * (gpu_memory or 0)
        if gpu_memory is None:
            notes.append("vLLM engine share not counted: give --gpu-memory")
        what = f"vLLM engine ({s.vllm_fraction:.0%} of the GPU; sleeps: {s.vllm_sleep > 0})"
        return [(what, engine, engine if s.vllm_sleep == 0 else 0.0)]
    c, b = DTYPE_BYTES[s.compute], s.generation_batch
    kv = b * s.sample_len * shape.layers * 2 * shape.kv_heads * shape.head_dim * c
    logits = 3 * b * shape.vocab * 4
    lines: list[Line] = [(f"hf sampling: KV cache of {b} x {s.sample_len}, logits", kv + logits, 0)]
    if trainable_copy:
        shard = s.gpus if s.strategy == "fsdp" else 1
        label = "FSDP gathered weights" if shard > 1 else "autocast weight copies"
        lines.append((f"hf sampling: {label} ({s.compute})", trainable_copy, 0))
    return lines


def fixes(shape: ModelShape, s: Setup, gpu_memory: float) -> list[str]:
    """Changes that would make the plan fit, each alone where one is enough, else pairs."""
    candidates = _fix_candidates(shape, s, gpu_memory)
    alone = [text for text, alt in candidates if estimate(shape, alt, gpu_memory).fits]
    if alone:
        return alone
    pairs = []
    for i, (t1, a1) in enumerate(candidates):
        for t2, a2 in candidates[i + 1 :]:
            if estimate(shape, _merge(s, a1, a2), gpu_memory).fits:
                pairs.append(f"{t1} and {t2}")
    return pairs[:4]


def _fix_candidates(shape: ModelShape, s: Setup, gpu_memory: float) -> list[tuple[str, Setup]]:
    """(setting to change, the setup with it changed), in the order they are suggested."""
    out: list[tuple[str, Setup]] = []
    if s.lora_r is None:
        out += _sharding_fix(shape, s, gpu_memory)
        lora = replace(s, lora_r=16, lora_targets="all-linear")
        out.append(("model.lora={r: 16} (train LoRA adapters on a frozen base)", lora))
    if not s.checkpointing:
        out.append(("model.gradient_checkpointing=true", replace(s, checkpointing=True)))
    for tokens in (16384, 8192, 4096, 2048):
        if s.sample_len <= tokens < s.micro_tokens:
            # the token cap of whichever micro-batching the recipe uses (both bound tokens)
            name = "micro_batch_tokens" if s.packed else "max_tokens_per_micro_batch"
            out.append((f"algorithm.{name}={tokens}", replace(s, micro_tokens=tokens)))
    if s.backend == "vllm":
        if s.vllm_sleep == 0:
            out.append(("policy.options.sleep_level=1", replace(s, vllm_sleep=1)))
        for frac in (0.4, 0.3, 0.2):
            if frac < s.vllm_fraction:
                setting = f"policy.options.gpu_memory_utilization={frac}"
                out.append((setting, replace(s, vllm_fraction=frac)))
    elif s.backend != "vllm-server" and s.generation_batch > 8:
        setting = "policy.options.generation_batch_size=8"
        out.append((setting, replace(s, generation_batch=8)))
    return out


def _sharding_fix(shape: ModelShape, s: Setup, gpu_memory: float) -> list[tuple[str, Setup]]:
    """fsdp over the fewest GPUs (a power of two, at least today's) that fits, if any."""
    if s.strategy == "fsdp" and s.gpus >= 2:
        return []
    for n in (2, 4, 8, 16, 32, 64):
        alt = replace(s, strategy="fsdp", gpus=n)
        if n >= s.gpus and estimate(shape, alt, gpu_memory).fits:
            where = "the" if n == s.gpus else "at least"
            text = (
                f"distributed.strategy=fsdp over {where} {n} GPUs (torchrun --nproc_per_node {n})"
            )
            return [(text, alt)]
    return []


def _merge(base: Setup, a: Setup, b: Setup) -> Setup:
    changes = {
        k: getattr(b, k) for k in base.__dataclass_fields__ if getattr(b, k) != getattr(base, k)
    }
    return replace(a, **changes)


def read_shape(model_path: str) -> ModelShape | None:
    """The shape in ``model_path/config.json``, or None when there is none to read."""
    config = Path(model_path).expanduser() / "config.json"
    if not config.is_file():
        return None
    return ModelShape.from_config(json.loads(config.read_text()))


def parse_memory(text: str) -> float:
    """'80GiB', '80GB', '81920MiB' or a number of bytes -> bytes."""
    units = {"tib": 2**40, "gib": GIB, "mib": 2**20, "tb": 1e12, "gb": 1e9, "mb": 1e6, "b": 1.0}
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*", text.lower())
    if match is None or match.group(2) not in {*units, ""}:
        raise ValueError(f"cannot read {text!r} as a memory size; write e.g. 80GiB or 81920MiB")
    value = float(match.group(1)) * units.get(match.group(2), 1.0)
    if value <= 0:
        raise ValueError(f"memory size {text!r} must be positive")
    return value


def visible_gpu_memory() -> float | None:
    """Total memory of the first visible GPU (via nvidia-smi, without importing torch)."""
    if shutil.which("nvidia-smi") is None:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
    try:
        out = subprocess.run(
            [
                "nvidia-smi",
                f"--id={visible}",
                "--query-gpu=memory.total",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        return float(out.strip().splitlines()[0]) * 2**20
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def default_gpus() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class Verdict:
    """The plan of a recipe, rendered, with what would fix it when it does not fit."""

    text: str
    fits: bool | None  # None: nothing to compare against (no GPU memory given, no config)
    fixes: list[str]


def params_text(count: int) -> str:
    """A parameter count as people write it: 8.19B, 0.35M (not 0.00B)."""
    return f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.2f}M"


def check_recipe(
    recipe: Any, gpus: int, gpu_memory: float | None, cpu: bool | None = None
) -> Verdict:
    """The memory plan of ``recipe`` on ``gpus`` GPUs of ``gpu_memory`` bytes each, or, for
    a CPU run (``cpu``; default: model.device is "cpu"), of its one process."""
    shape = read_shape(recipe.model.path)
    if shape is None:
        return Verdict(
            f"memory plan: no config.json in model.path {recipe.model.path!r} (a hub id, or "
            "a model still to be created): nothing to plan from",
            None,
            [],
        )
    cpu = recipe.model.device == "cpu" if cpu is None else cpu
    setup = Setup.from_recipe(recipe, 1 if cpu else gpus)
    plan = estimate(shape, setup, None if cpu else gpu_memory, on_gpu=not cpu)
    if recipe.critic.name == "local":
        plan.notes.append("the local critic's own model is not counted: add its weights")
    text = plan.render(f"memory plan for {params_text(shape.params)} parameters")
    if cpu and recipe.model.device != "cpu":
        text += "\n  no GPU visible: pass --gpus or --gpu-memory (e.g. 80GiB) to plan a GPU run"
    elif gpu_memory is None and not cpu:
        text += "\n  no GPU visible: pass --gpu-memory (e.g. 80GiB) to check the fit"
    found = fixes(shape, setup, gpu_memory) if plan.fits is False else []
    return Verdict(text, plan.fits, found)


def partial_recipe(raw: dict[str, Any]) -> Any | None:
    """The sections the plan reads (model, algorithm, policy, critic, distributed), each
    validated on its own, from a recipe that failed validation elsewhere (a data path
    that exists only on the training machine, say): the plan can still be printed. None
    when one of those sections is itself invalid."""
    from types import SimpleNamespace

    from pydantic import ValidationError

    from cgrpo.config.schema import AlgorithmConfig, ComponentSpec, DistributedConfig, ModelConfig
    from cgrpo.errors import UnknownComponentError
    from cgrpo.plugins import get_registries

    try:
        policy = ComponentSpec.model_validate(raw.get("policy", "hf"))
        options = get_registries()["policy"].get(policy.name).options
        policy.options = options.model_validate(policy.options).model_dump()  # defaults filled
        return SimpleNamespace(
            model=ModelConfig(**raw["model"]),
            algorithm=AlgorithmConfig(**raw.get("algorithm", {})),
            distributed=DistributedConfig(**raw.get("distributed", {})),
            policy=policy,
            critic=ComponentSpec.model_validate(raw.get("critic", "ground_truth")),
        )
    except (ValidationError, UnknownComponentError, KeyError, TypeError):
        return None


def fixes_text(found: list[str]) -> str:
    if not found:
        return "no single change found that makes it fit: use more or larger GPUs"
    return "would fit with any one of:\n" + "\n".join(f"  - {f}" for f in found)
