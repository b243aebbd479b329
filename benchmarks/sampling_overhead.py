"""The hf sampler's time per decode step against the bare model forward at the same shapes.

    python benchmarks/sampling_overhead.py [--device cpu|cuda] [--batches 1,16,64]
                                           [--tokens 64] [--reps 3] [--json FILE]

A 2-layer model is built in code (Qwen2, hidden ``--hidden``, the test tokenizer's
384-token vocabulary or ``--vocab``; random weights). Per batch size B:

* sampler: ``HFPolicy.generate`` of B prompts (12-20 tokens, left-padded), ``--tokens``
  new tokens each at temperature 1 (no row can stop early: the end-of-sequence id is one the
  model never emits), unseeded and seeded (``run.reproducible_sampling``);
* bare forward: the same prefill and ``--tokens - 1`` decode forwards of the same model
  with the same cache and attention mask (handed over as a ready 4D mask, the cheapest
  way to call the model), the next token an argmax, nothing else.

Each side's time is divided by ``--tokens``: the time per decode step. The ratio
sampler / bare is the framework's overhead per step (sampling, log-prob recording, stop
checks, cache bookkeeping). CPU-seconds at one thread on CPU (the machine is shared), wall
seconds after a synchronize on CUDA; the sides alternate over ``--reps`` repetitions and
the medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build(args):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from cgrpo.model.attention import use_cgrpo_sdpa

    config = Qwen2Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=2 * args.hidden,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        use_sliding_window=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(args.device).eval()
    use_cgrpo_sdpa(model)
    return model


def policy_for(model, device: str, decode: str = "auto"):
    """The hf backend on ``model`` with an end-of-sequence id the model never emits."""
    from cgrpo.builtins.policies.hf import HFPolicy
    from cgrpo.interfaces import BuildContext
    from cgrpo.model.precision import Precision
    from cgrpo.model.tiny import build_tokenizer

    dtype = "bfloat16" if device == "cuda" else "float32"
    ctx = BuildContext(
        model=model, tokenizer=build_tokenizer(), precision=Precision.from_recipe(dtype, device)
    )
    policy = HFPolicy(HFPolicy.Options(generation_batch_size=1024, decode=decode), ctx)
    policy.eos_ids = [model.config.vocab_size + 7]  # out of the vocabulary: never sampled
    return policy


def prompts_for(batch: int, vocab: int) -> list[list[int]]:
    return [[3 + (7 * i + j) % (vocab - 3) for j in range(12 + i % 9)] for i in range(batch)]


def bare_decode(model, prompts, tokens: int, precision) -> None:
    """Prefill, then ``tokens - 1`` single-token forwards with the cache: the model alone."""
    import torch
    from transformers import DynamicCache

    from cgrpo.builtins.policies.hf import left_pad

    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, 0)
    ids, mask = ids.to(device), mask.to(device)
    cache = DynamicCache(config=model.config)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode(), precision.autocast():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                    past_key_values=cache, use_cache=True, logits_to_keep=1)  # fmt: skip
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        pos = positions[:, -1:]
        for _ in range(tokens - 1):
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            pos = pos + 1
            ready = mask[:, None, None, :].bool()  # the cheapest mask: no mask building
            out = model(input_ids=nxt, attention_mask=ready, position_ids=pos,
                        past_key_values=cache, use_cache=True, logits_to_keep=1)  # fmt: skip
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        nxt.cpu()


def measure(model, policy, batch: int, args) -> dict:
    from packing import clock  # this script's folder is on sys.path when it runs

    from cgrpo.types import SamplingParams

    prompts = prompts_for(batch, model.config.vocab_size)
    params = SamplingParams(n=1, max_new_tokens=args.tokens)
    seeds = list(range(batch))
    sides = {
        "forward": lambda: bare_decode(model, prompts, args.tokens, policy.precision),
        "sampler": lambda: policy.generate(prompts, params),
        "seeded": lambda: policy.generate(prompts, params, seeds=seeds),
    }
    now = clock(args.device)
    for run in sides.values():  # warm-up
        run()
    spent: dict[str, list[float]] = {k: [] for k in sides}
    for rep in range(args.reps):
        for kind in list(sides) if rep % 2 == 0 else list(reversed(sides)):
            started = now()
            sides[kind]()
            spent[kind].append((now() - started) / args.tokens)
    med = {k: statistics.median(v) for k, v in spent.items()}
    return dict(
        device=args.device,
        batch=batch,
        step_s=med["sampler"],
        forward_s=med["forward"],
        ratio=med["sampler"] / med["forward"],
        decode="eager" if policy.compiled is None else "compiled",
        seeded_step_s=med["seeded"],
        seeded_ratio=med["seeded"] / med["forward"],
    )


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batches", default="1,16,64")
    p.add_argument("--tokens", type=int, default=64, help="new tokens per sequence")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--vocab", type=int, default=384)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--decode", choices=["auto", "compiled", "eager"], default="auto",
                   help="the hf backend's decode option (auto: compiled on CUDA)")  # fmt: skip
    p.add_argument("--json", help="write one record per batch size here")
    args = p.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    model = build(args)
    policy = policy_for(model, args.device, args.decode)
    unit = "wall ms" if args.device == "cuda" else "CPU-ms"
    print(f"2-layer Qwen2, hidden {args.hidden}, vocabulary {args.vocab}, {args.tokens} new "
          f"tokens; {unit} per decode step, median of {args.reps}")  # fmt: skip
    records = []
    for batch in (int(b) for b in args.batches.split(",")):
        r = measure(model, policy, batch, args)
        records.append(r)
        print(f"  batch {batch:3d}: forward {r['forward_s'] * 1e3:.2f}, sampler "
              f"{r['step_s'] * 1e3:.2f} ({r['ratio']:.2f}x), seeded sampler "
              f"{r['seeded_step_s'] * 1e3:.2f} ({r['seeded_ratio']:.2f}x)", flush=True)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
