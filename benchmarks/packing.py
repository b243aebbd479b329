"""The update's real tokens per second, padded micro-batches against packed ones.

    python benchmarks/packing.py [--device cpu|cuda] [--rows 64] [--group 8]
                                 [--median 128] [--tail 8] [--reps 3] [--json FILE]

A model is built in code (a Qwen2 of ``--hidden`` x ``--layers`` on CPU, or a Qwen3 shape
of benchmarks/mfu.py with ``--shape`` on CUDA; random weights: the values change no
FLOP). Its update batch is ``--rows`` rows in groups of ``--group`` sharing a prompt, with
response lengths on a log-normal curve whose longest row is ``--tail`` x the median (the
paper allows 6,144 response tokens; most responses are far shorter), placed at the
quantiles (i + 0.5) / rows, so every run sees the same lengths, and shuffled.

Every side runs cgrpo's own :func:`cgrpo.train.update.update_policy`, one optimizer step
per rep, alternating (padded, bucketed, packed, packed, bucketed, padded, ...):

* padded: the recipe default, ``algorithm.micro_batch_size: 8`` rows per micro-batch
  (longest first, each padded to its longest row);
* bucketed: padded micro-batches of rows of similar length, up to ``--budget`` padded
  tokens each (``max_tokens_per_micro_batch``): what padding can do at its best;
* packed: ``algorithm.micro_batch_tokens`` (``--budget``) tokens per micro-batch, rows
  concatenated without padding (:mod:`cgrpo.model.packing`).

Real tokens are every row's prompt + response tokens, the same count on both sides;
tokens/s is that count over the update's CPU-seconds (one thread; wall seconds after a
synchronize on CUDA). Utilisation is real tokens over the positions the body processed
(the update metric ``update/token_utilization``). Before timing, one update of each kind
is run with the optimizer replaced by a gradient recorder, from the same weights, and the
loss and the gradients are compared (max absolute difference).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def lengths(rows: int, median: float, tail: float) -> list[int]:
    """Log-normal response lengths at the quantiles (i + 0.5) / rows, the longest
    ``tail`` x ``median``."""
    z = [statistics.NormalDist().inv_cdf((i + 0.5) / rows) for i in range(rows)]
    sigma = math.log(tail) / max(z)
    return [max(1, round(median * math.exp(sigma * q))) for q in z]


def update_rows(args, vocab: int):
    """The update batch: groups of ``args.group`` rows sharing a prompt (40-120 tokens),
    log-normal response lengths in a seeded random order, half the groups with one
    refinement row."""
    import torch

    from cgrpo.algo.mixing import TrainRow

    rng = random.Random(0)
    resp = lengths(args.rows, args.median, args.tail)
    rng.shuffle(resp)
    gen = torch.Generator().manual_seed(0)
    out = []
    for i, n in enumerate(resp):
        group = i // args.group
        if i % args.group == 0:
            prompt = torch.randint(3, vocab, (rng.randint(40, 120),), generator=gen).tolist()
        refinement = group % 2 == 1 and i % args.group == args.group - 1
        old = None if refinement else (-torch.rand(n, generator=gen) * 4).tolist()
        ids = torch.randint(3, vocab, (n,), generator=gen).tolist()
        out.append(TrainRow(group, prompt, ids, old, refinement, float(i % 3 == 0)))
        out[-1].advantage = (i % 3 == 0) - 1 / 3
    return out


def build_model(args):
    import torch

    if args.device == "cuda":
        from mfu import build

        return build(args.shape, "cuda")
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 32,
        num_key_value_heads=max(1, args.hidden // 64),
        intermediate_size=args.hidden * 3,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        use_sliding_window=False,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    from cgrpo.model.attention import use_cgrpo_sdpa

    use_cgrpo_sdpa(model)  # what model loading does on CPU
    return model


def settings_for(kind: str, args):
    """UpdateSettings of one side."""
    from cgrpo.algo.loss import LossConfig
    from cgrpo.model.precision import FULL, Precision
    from cgrpo.train.update import UpdateSettings

    precision = Precision.from_recipe("bfloat16", "cuda") if args.device == "cuda" else FULL
    extra = {}
    if kind == "bucketed":  # padded, rows of similar length up to the same token budget
        extra = dict(micro_batch_size=args.rows, max_tokens_per_micro_batch=args.budget)
    if kind == "packed":
        extra = dict(micro_batch_tokens=args.budget)
    loss = LossConfig(
        entropy_coef=0.001, normalizer=float(max(lengths(args.rows, args.median, args.tail)))
    )
    base = dict(micro_batch_size=8, temperature=1.0, loss=loss, grad_clip=1.0)
    return UpdateSettings(updates_per_step=1, precision=precision, **{**base, **extra})


class GradRecorder:
    """Stands in for the optimizer: keeps a copy of each gradient at ``step``."""

    def __init__(self, model):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.param_groups = [{"lr": 0.0}]
        self.grads: list = []

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        self.grads = [p.grad.detach().float().clone() for p in self.params]


def compare(model, rows, sides: dict) -> tuple[float, float]:
    """Max |loss difference| and max |gradient difference| of padded vs packed, one
    update each from the same weights."""
    from cgrpo.train.update import update_policy

    got = {}
    for kind, settings in sides.items():
        rec = GradRecorder(model)
        metrics = update_policy(model, rec, None, rows, settings, pad_id=0)
        got[kind] = (metrics["loss/total"], rec.grads)
    (la, ga), (lb, gb) = got["padded"], got["packed"]
    grad = max(float((a - b).abs().max()) for a, b in zip(ga, gb, strict=True))
    return abs(la - lb), grad


def clock(device: str):
    """The benchmarks' clock: process CPU-seconds on CPU, where the machine is shared and
    one thread does the work; wall seconds after a synchronize on CUDA, whose kernels run
    apart from the CPU."""
    import torch

    if device == "cuda":

        def now() -> float:
            torch.cuda.synchronize()
            return time.perf_counter()

        return now
    return time.process_time


def alternate(model, rows, sides: dict, args) -> tuple[dict, dict]:
    """One real update (AdamW) per side and rep, the sides in turn (A B C C B A ...), after
    a warm-up of each: (seconds per side, token utilisation per side)."""
    from cgrpo.config.schema import OptimConfig
    from cgrpo.train.update import make_optimizer, update_policy

    opt, _ = make_optimizer(model, OptimConfig(lr=1e-6), total_updates=100)
    now = clock(args.device)
    spent: dict[str, list[float]] = {k: [] for k in sides}
    util: dict[str, float] = {}
    for kind in sides:  # warm-up
        update_policy(model, opt, None, rows, sides[kind], pad_id=0)
    for rep in range(args.reps):
        for kind in sides if rep % 2 == 0 else list(reversed(sides)):
            started, wall = now(), time.perf_counter()
            metrics = update_policy(model, opt, None, rows, sides[kind], pad_id=0)
            spent[kind].append(now() - started)
            util[kind] = metrics["update/token_utilization"]
            print(f"  {kind:8s} rep {rep}: {spent[kind][-1]:.2f} s "
                  f"(wall {time.perf_counter() - wall:.2f} s)", flush=True)  # fmt: skip
    return spent, util


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--shape", default="qwen3-1.7b", help="CUDA: a Qwen3 shape of mfu.py")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--group", type=int, default=8, help="rows sharing a prompt")
    p.add_argument("--median", type=float, default=128, help="median response tokens")
    p.add_argument("--tail", type=float, default=8.0, help="longest / median response")
    p.add_argument("--budget", type=int, default=4096, help="packed tokens per micro-batch")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", help="write the medians here")
    args = p.parse_args()
    torch.set_num_threads(1) if args.device == "cpu" else None
    model = build_model(args)
    vocab = model.config.vocab_size
    rows = update_rows(args, vocab)
    real = sum(len(r.prompt_ids) + len(r.response_ids) for r in rows)
    sides = {k: settings_for(k, args) for k in ("padded", "bucketed", "packed")}
    diffs = compare(model, rows, {k: sides[k] for k in ("padded", "packed")})
    spent, util = alternate(model, rows, sides, args)
    rate = {k: real / statistics.median(v) for k, v in spent.items()}
    unit = "wall s" if args.device == "cuda" else "CPU-s"
    longest = max(len(r.response_ids) for r in rows)
    print(f"{args.rows} rows, {real} real tokens (responses: median {args.median:.0f}, longest "
          f"{longest}); {unit} per update, median of {args.reps}")  # fmt: skip
    for kind in sides:
        print(f"  {kind:8s}: {statistics.median(spent[kind]):.2f} s, {rate[kind]:,.0f} real "
              f"tokens/s, utilisation {util[kind]:.1%}")  # fmt: skip
    print(f"  packed / padded: {rate['packed'] / rate['padded']:.2f}x; max |loss diff| "
          f"{diffs[0]:.2e}, max |grad diff| {diffs[1]:.2e}")  # fmt: skip
    if args.json:
        record = dict(
            device=args.device,
            padded_tokens_per_s=rate.get("padded"),
            packed_tokens_per_s=rate.get("packed"),
            utilization=util.get("packed"),
            padded_utilization=util.get("padded"),
            bucketed_tokens_per_s=rate.get("bucketed"),
            bucketed_utilization=util.get("bucketed"),
            max_abs_loss_diff=diffs[0],
            max_abs_grad_diff=diffs[1],
        )
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
