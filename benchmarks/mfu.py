"""Model FLOPs utilisation of cgrpo's update, padded and packed, and the hf sampler's tokens
per second, on GPU.

    python benchmarks/mfu.py [--shape qwen3-1.7b] [--rows 8] [--length 1024]
                             [--lengths uniform|lognormal] [--steps 4] [--checkpointing]
                             [--peak-tflops N] [--sample-rows 64] [--sample-tokens 256]
                             [--decode auto|compiled|eager] [--json FILE]

A model of the named Qwen3 shape is built on the device with random weights (nothing is
downloaded; the weights' values do not change the FLOPs). The update is cgrpo's own
:func:`cgrpo.train.update.update_policy` as a recipe with ``model.dtype: bfloat16`` runs
it: float32 master weights, bf16 autocast, the chunked log-prob projection, AdamW, gradient
clipping; once with padded micro-batches (all rows in one, padded to the longest) and once
packed (``algorithm.micro_batch_tokens`` = all the rows' tokens: one micro-batch without
padding, varlen flash attention). Rows have distinct prompts of 64 tokens and responses of
``--length`` tokens (``uniform``) or log-normal lengths with median ``--length`` / 4 and
the longest 8x the median (``lognormal``, as benchmarks/packing.py). Each is timed over
``--steps`` updates after two warm-ups; ``--checkpointing`` adds both with gradient
checkpointing.

MFU counts model FLOPs of the real tokens, as PaLM (Chowdhery et al., 2022, appendix B)
defines them: 6 x (matmul parameters: every linear layer and the output layer, not the
embedding lookup) per token for forward and backward, plus the causal attention's 6 x
layers x heads x head_dim x n per token of a sequence of n tokens (half the 12 x ... of
full attention). Padding is not counted (it is work, not model FLOPs), nor is
recomputation under gradient checkpointing. The peak is the chip's dense bf16 rate: 989
TFLOP/s for an H100 or H200 SXM; give ``--peak-tflops`` for another chip.

The sampler row runs the ``hf`` backend for ``--sample-rows`` sequences of exactly
``--sample-tokens`` new tokens and prints new tokens per second (``--decode``: the
backend's option; auto = compiled CUDA graphs; ``--profile`` prints where 16 decode steps
spend their time, CPU and GPU).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/packing.py

# Qwen3 configs (hidden, layers, heads, kv heads, head_dim, intermediate, tied embeddings)
SHAPES = {
    "qwen3-0.6b": (1024, 28, 16, 8, 128, 3072, True),
    "qwen3-1.7b": (2048, 28, 16, 8, 128, 6144, True),
    "qwen3-4b": (2560, 36, 32, 8, 128, 9728, True),
    "tiny": (64, 2, 4, 2, 16, 128, True),  # for CPU dry runs of the scripts that use this
}
VOCAB = 151_936
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}


def build(shape: str, device, vocab: int = VOCAB):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from cgrpo.model.attention import use_cgrpo_sdpa

    hidden, layers, heads, kv, head_dim, inter, tied = SHAPES[shape]
    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        intermediate_size=inter,
        max_position_embeddings=8192,
        tie_word_embeddings=tied,
        eos_token_id=vocab - 1,
        pad_token_id=0,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(config)
    use_cgrpo_sdpa(model)  # as model loading does: packed micro-batches need it
    return model.float()


def sync(device: str) -> float:
    """``time.perf_counter()`` after the device's queued work is done."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def matmul_params(model) -> int:
    """Parameters that take part in a matrix product per token: every ``nn.Linear`` (the
    output layer included, also when it shares the embedding's weight)."""
    import torch

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def flops_per_token(model, context: int) -> float:
    cfg = model.config
    attention = 6 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * context
    return 6 * matmul_params(model) + attention


def response_lengths(rows: int, length: int, kind: str) -> list[int]:
    """``uniform``: ``length`` each; ``lognormal``: median ``length / 4``, longest 8x it."""
    if kind == "uniform":
        return [length] * rows
    from packing import lengths

    return lengths(rows, length / 4, 8.0)


def update_rows(rows: int, length: int, prompt: int = 64, kind: str = "uniform", vocab=VOCAB):
    # (vocab: the model's; ids run from 3 to vocab - 2, never the end-of-sequence id)
    """``rows`` rows, each with its own random prompt (no prompt is shared, so both sides
    compute every real token) and random response ids."""
    import torch

    from cgrpo.algo.mixing import TrainRow

    g = torch.Generator().manual_seed(0)
    out = []
    for i, n in enumerate(response_lengths(rows, length, kind)):
        row = TrainRow(
            i // 2,
            torch.randint(3, vocab - 1, (prompt,), generator=g).tolist(),
            torch.randint(3, vocab - 1, (n,), generator=g).tolist(),
            [-12.0] * n,
            False,
            (-0.5, 0.5)[i % 2],
            (-0.5, 0.5)[i % 2],  # advantage: a gradient that is not zero
        )
        out.append(row)
    return out


def model_flops(model, rows) -> float:
    """Model FLOPs of one update (forward and backward) over the rows' real tokens."""
    total = 0.0
    for r in rows:
        n = len(r.prompt_ids) + len(r.response_ids)
        total += n * flops_per_token(model, n)
    return total


def update_settings(rows, packed: bool, device: str = "cuda"):
    """One micro-batch of all the rows: padded to the longest, or packed."""
    from cgrpo.algo.loss import LossConfig
    from cgrpo.model.precision import Precision
    from cgrpo.train.update import UpdateSettings

    longest = max(len(r.response_ids) for r in rows)
    tokens = sum(len(r.prompt_ids) + len(r.response_ids) for r in rows)
    return UpdateSettings(
        updates_per_step=1,
        micro_batch_size=len(rows),
        temperature=1.0,
        loss=LossConfig(entropy_coef=0.0, normalizer=float(longest)),
        grad_clip=1.0,
        precision=Precision.from_recipe("bfloat16", device),
        micro_batch_tokens=tokens if packed else None,
    )


def time_updates(model, rows, steps: int, checkpointing: bool, settings) -> list[float]:
    """Seconds of each of ``steps`` updates, after two warm-ups."""
    import torch

    from cgrpo.config.schema import OptimConfig
    from cgrpo.train.update import make_optimizer, update_policy

    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
    model.config.use_cache = False
    opt, sched = make_optimizer(model, OptimConfig(lr=1e-6), total_updates=steps + 2)
    device = next(model.parameters()).device.type
    seconds = []
    for i in range(steps + 2):
        started = sync(device)
        update_policy(model, opt, sched, rows, settings, pad_id=0)
        if i >= 2:
            seconds.append(sync(device) - started)
    del opt, sched
    model.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.empty_cache()
    return seconds


def time_sampling(model, rows: int, tokens: int, profile: bool = False, decode: str = "auto"):
    """New tokens per second of the hf backend: ``rows`` sequences of ``tokens`` new tokens,
    after a warm-up of the same shape (which compiles the decode step where it is).
    Returns (tokens/s, prompts, completions per prompt)."""
    import torch

    from cgrpo.builtins.policies.hf import HFPolicy
    from cgrpo.interfaces import BuildContext
    from cgrpo.model.precision import Precision
    from cgrpo.model.tiny import build_tokenizer
    from cgrpo.types import SamplingParams

    device = next(model.parameters()).device.type
    model.gradient_checkpointing_disable()
    model.config.use_cache = True
    model.eval()
    tok = build_tokenizer()
    ctx = BuildContext(
        model=model, tokenizer=tok, precision=Precision.from_recipe("bfloat16", device)
    )
    policy = HFPolicy(HFPolicy.Options(generation_batch_size=rows, decode=decode), ctx)
    policy.eos_ids = [model.config.vocab_size - 1]  # ~1 in the vocabulary: rows run ~all
    prompts = [tok.encode(f"What is {i} + {2 * i}?") for i in range(rows)]
    params = SamplingParams(n=1, max_new_tokens=tokens)
    policy.generate(prompts, params)  # warm-up: the same shapes (compiles them)
    started = sync(device)
    out = policy.generate(prompts, params)
    new = sum(len(c.token_ids) for g in out for c in g)
    rate = new / (sync(device) - started)
    if profile:  # where a decode step's time goes: one short generate under the profiler
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler

        activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
        with profiler(activities=activities) as prof:
            policy.generate(prompts, SamplingParams(n=1, max_new_tokens=16))
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
        print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=10))
    return rate, prompts, out


def measure_updates(model, rows, args, peak: float) -> list[dict]:
    """Padded and packed (and with --checkpointing, both again with it): seconds, tokens/s,
    TFLOP/s, MFU and peak memory of each."""
    import torch

    flops = model_flops(model, rows)
    tokens = sum(len(r.prompt_ids) + len(r.response_ids) for r in rows)
    out = []
    for checkpointing in (False, True) if args.checkpointing else (False,):
        for packed in (False, True):
            torch.cuda.reset_peak_memory_stats()
            settings = update_settings(rows, packed)
            seconds = time_updates(model, rows, args.steps, checkpointing, settings)
            mean = statistics.mean(seconds)
            out.append(dict(
                layout="packed" if packed else "padded", checkpointing=checkpointing,
                seconds=mean, tokens_per_s=tokens / mean, tflops=flops / mean / 1e12,
                mfu=flops / mean / peak, peak_gib=torch.cuda.max_memory_allocated() / 2**30,
            ))  # fmt: skip
            r = out[-1]
            ckpt = "on " if checkpointing else "off"
            print(f"  update {r['layout']}, checkpointing {ckpt}: {mean:.3f} s, "
                  f"{r['tokens_per_s']:,.0f} tokens/s, {r['tflops']:.0f} TFLOP/s, "
                  f"MFU {r['mfu']:.1%}, peak {r['peak_gib']:.1f} GiB", flush=True)  # fmt: skip
    return out


def chip_peak(name: str, given: float | None) -> float:
    peak = given * 1e12 if given else None
    peak = peak or next((v for k, v in PEAK_BF16.items() if k in name), None)
    if peak is None:
        raise SystemExit(f"no known bf16 peak for {name!r}: pass --peak-tflops")
    return peak


def main() -> None:
    import json

    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-1.7b")
    p.add_argument("--rows", type=int, default=8, help="sequences per update (one micro-batch)")
    p.add_argument("--length", type=int, default=1024, help="response tokens per sequence")
    p.add_argument("--lengths", choices=["uniform", "lognormal"], default="uniform")
    p.add_argument("--steps", type=int, default=4, help="timed updates per row")
    p.add_argument("--checkpointing", action="store_true", help="also with checkpointing")
    p.add_argument("--peak-tflops", type=float, default=None, help="chip's dense bf16 peak")
    p.add_argument("--sample-rows", type=int, default=64)
    p.add_argument("--sample-tokens", type=int, default=256)
    p.add_argument("--decode", choices=["auto", "compiled", "eager"], default="auto")
    p.add_argument("--profile", action="store_true", help="print a profile of 16 decode steps")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/mfu.py needs CUDA (it measures GPU utilisation)")
    name = torch.cuda.get_device_name(0)
    peak = chip_peak(name, args.peak_tflops)
    model = build(args.shape, "cuda")
    rows = update_rows(args.rows, args.length, kind=args.lengths)
    tokens = sum(len(r.prompt_ids) + len(r.response_ids) for r in rows)
    print(f"{name}, torch {torch.__version__}; {args.shape}: {matmul_params(model) / 1e9:.2f}B "
          f"matmul parameters; update of {args.rows} rows, {tokens} tokens ({args.lengths}); "
          f"peak {peak / 1e12:.0f} TFLOP/s bf16")  # fmt: skip
    updates = measure_updates(model, rows, args, peak)
    rate, _, _ = time_sampling(
        model, args.sample_rows, args.sample_tokens, args.profile, args.decode
    )
    print(f"  hf sampling ({args.decode}), {args.sample_rows} sequences x {args.sample_tokens} "
          f"new tokens: {rate:,.0f} new tokens/s")  # fmt: skip
    if args.json:
        record = dict(device=name, shape=args.shape, updates=updates, sampling_tokens_per_s=rate)
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
