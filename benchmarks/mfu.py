"""Model FLOPs utilisation of cgrpo's update, and the hf sampler's tokens per second, on GPU.

    python benchmarks/mfu.py [--shape qwen3-1.7b] [--rows 8] [--length 1024] [--steps 4]
                             [--peak-tflops N] [--sample-rows 64] [--sample-tokens 256]

A model of the named Qwen3 shape is built on the device with random weights (nothing is
downloaded; the weights' values do not change the FLOPs). The update is cgrpo's own
:func:`cgrpo.train.update.update_policy` as a recipe with ``model.dtype: bfloat16`` runs
it: float32 master weights, bf16 autocast, the chunked log-prob projection, AdamW, gradient
clipping. Each row is timed over ``--steps`` updates after two warm-ups, with and without
gradient checkpointing.

MFU counts model FLOPs, as PaLM (Chowdhery et al., 2022, appendix B) defines them:
6 x (matmul parameters: every linear layer and the output layer, not the embedding lookup)
per token for forward and backward, plus the causal attention's 6 x layers x heads x
head_dim x T per token (half the 12 x ... of full attention). Recomputation under gradient
checkpointing is not counted (it is work, not model FLOPs). The peak is the chip's dense
bf16 rate: 989 TFLOP/s for an H100 or H200 SXM; give ``--peak-tflops`` for another chip.

The sampler row runs the ``hf`` backend (``generate`` with cgrpo's log-prob recorder) for
``--sample-rows`` sequences of exactly ``--sample-tokens`` new tokens and prints new tokens
per second, the baseline a faster decode path must beat (``--profile`` prints where 16
decode steps spend their time, CPU and GPU).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Qwen3 configs (hidden, layers, heads, kv heads, head_dim, intermediate, tied embeddings)
SHAPES = {
    "qwen3-0.6b": (1024, 28, 16, 8, 128, 3072, True),
    "qwen3-1.7b": (2048, 28, 16, 8, 128, 6144, True),
    "qwen3-4b": (2560, 36, 32, 8, 128, 9728, True),
}
VOCAB = 151_936
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}


def build(shape: str, device):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    hidden, layers, heads, kv, head_dim, inter, tied = SHAPES[shape]
    config = Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        intermediate_size=inter,
        max_position_embeddings=8192,
        tie_word_embeddings=tied,
        eos_token_id=VOCAB - 1,
        pad_token_id=0,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(config)
    return model.float()


def matmul_params(model) -> int:
    """Parameters that take part in a matrix product per token: every ``nn.Linear`` (the
    output layer included, also when it shares the embedding's weight)."""
    import torch

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def flops_per_token(model, context: int) -> float:
    cfg = model.config
    attention = 6 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * context
    return 6 * matmul_params(model) + attention


def update_rows(rows: int, length: int, prompt: int = 64):
    import torch

    from cgrpo.algo.mixing import TrainRow

    g = torch.Generator().manual_seed(0)
    return [
        TrainRow(
            i // 2,
            torch.randint(3, VOCAB - 1, (prompt,), generator=g).tolist(),
            torch.randint(3, VOCAB - 1, (length,), generator=g).tolist(),
            [-12.0] * length,
            False,
            (-0.5, 0.5)[i % 2],
        )
        for i in range(rows)
    ]


def time_updates(model, rows, steps: int, checkpointing: bool) -> list[float]:
    import torch

    from cgrpo.algo.loss import LossConfig
    from cgrpo.config.schema import OptimConfig
    from cgrpo.model.precision import Precision
    from cgrpo.train.update import UpdateSettings, make_optimizer, update_policy

    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
    model.config.use_cache = False
    length = len(rows[0].response_ids)
    opt, sched = make_optimizer(model, OptimConfig(lr=1e-6), total_updates=steps + 2)
    settings = UpdateSettings(
        updates_per_step=1,
        micro_batch_size=len(rows),
        temperature=1.0,
        loss=LossConfig(entropy_coef=0.0, normalizer=float(length)),
        grad_clip=1.0,
        precision=Precision.from_recipe("bfloat16", "cuda"),
    )
    seconds = []
    for i in range(steps + 2):
        torch.cuda.synchronize()
        started = time.perf_counter()
        update_policy(model, opt, sched, rows, settings, pad_id=0)
        torch.cuda.synchronize()
        if i >= 2:
            seconds.append(time.perf_counter() - started)
    del opt, sched
    model.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    return seconds


def time_sampling(model, rows: int, tokens: int, profile: bool = False) -> float:
    import torch

    from cgrpo.builtins.policies.hf import HFPolicy
    from cgrpo.interfaces import BuildContext
    from cgrpo.model.precision import Precision
    from cgrpo.model.tiny import build_tokenizer
    from cgrpo.types import SamplingParams

    model.gradient_checkpointing_disable()
    model.config.use_cache = True
    model.eval()
    tok = build_tokenizer()
    ctx = BuildContext(
        model=model, tokenizer=tok, precision=Precision.from_recipe("bfloat16", "cuda")
    )
    policy = HFPolicy(HFPolicy.Options(generation_batch_size=rows), ctx)
    policy.eos_ids = [VOCAB - 1]  # sampled ~1 in 151,936 times: rows run ~all tokens
    prompts = [tok.encode(f"What is {i} + {2 * i}?") for i in range(rows)]
    params = SamplingParams(n=1, max_new_tokens=tokens)
    policy.generate(prompts[:2], SamplingParams(n=1, max_new_tokens=8))  # warm-up
    torch.cuda.synchronize()
    started = time.perf_counter()
    out = policy.generate(prompts, params)
    torch.cuda.synchronize()
    new = sum(len(c.token_ids) for g in out for c in g)
    rate = new / (time.perf_counter() - started)
    if profile:  # where a decode step's time goes: one short generate under the profiler
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler

        activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
        with profiler(activities=activities) as prof:
            policy.generate(prompts, SamplingParams(n=1, max_new_tokens=16))
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
        print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=10))
    return rate


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-1.7b")
    p.add_argument("--rows", type=int, default=8, help="sequences per update (one micro-batch)")
    p.add_argument("--length", type=int, default=1024, help="response tokens per sequence")
    p.add_argument("--steps", type=int, default=4, help="timed updates per row")
    p.add_argument("--peak-tflops", type=float, default=None, help="chip's dense bf16 peak")
    p.add_argument("--sample-rows", type=int, default=64)
    p.add_argument("--sample-tokens", type=int, default=256)
    p.add_argument("--profile", action="store_true", help="print a profile of 16 decode steps")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/mfu.py needs CUDA (it measures GPU utilisation)")
    name = torch.cuda.get_device_name(0)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    peak = peak or next((v for k, v in PEAK_BF16.items() if k in name), None)
    if peak is None:
        raise SystemExit(f"no known bf16 peak for {name!r}: pass --peak-tflops")
    model = build(args.shape, "cuda")
    rows = update_rows(args.rows, args.length)
    context = len(rows[0].prompt_ids) + args.length
    tokens = sum(len(r.prompt_ids) + len(r.response_ids) for r in rows)
    per_token = flops_per_token(model, context)
    print(f"{name}, torch {torch.__version__}; {args.shape}: {matmul_params(model) / 1e9:.2f}B "
          f"matmul parameters; update of {args.rows} x {context} tokens; peak "
          f"{peak / 1e12:.0f} TFLOP/s bf16")  # fmt: skip
    for checkpointing in (False, True):
        torch.cuda.reset_peak_memory_stats()
        seconds = time_updates(model, rows, args.steps, checkpointing)
        mean = statistics.mean(seconds)
        achieved = per_token * tokens / mean
        print(f"  update, gradient checkpointing {'on ' if checkpointing else 'off'}: "
              f"{mean:.3f} s (min {min(seconds):.3f}, max {max(seconds):.3f}), "
              f"{tokens / mean:,.0f} tokens/s, {achieved / 1e12:.0f} TFLOP/s, "
              f"MFU {achieved / peak:.1%}, peak memory "
              f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")  # fmt: skip
    rate = time_sampling(model, args.sample_rows, args.sample_tokens, args.profile)
    print(f"  hf sampling, {args.sample_rows} sequences x {args.sample_tokens} new tokens: "
          f"{rate:,.0f} new tokens/s")  # fmt: skip


if __name__ == "__main__":
    main()
