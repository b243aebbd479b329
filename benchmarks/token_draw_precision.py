"""How exact the hf sampler's float32 draw is, and what it costs, at Qwen3's vocabulary.

    python benchmarks/token_draw_precision.py [--vocab 151936] [--rows 64] [--json FILE]

Three inverse-CDF draws over the same float32 probabilities (softmax of float32 logits):

* ``float64``: one float64 running sum over the vocabulary (cgrpo's previous draw);
* ``float32``: one float32 running sum (what a plain float32 draw would do);
* ``two-level``: float32 block sums, float64 running sums over the blocks and inside the
  chosen block (cgrpo's draw, :mod:`cgrpo.builtins.policies.token_draw`).

For each, the probability it actually gives every token (the length of the token's
interval, as the arithmetic computes it) is compared with the exact softmax of the logits
in float64: total-variation distance, and the exact mass of tokens whose interval is empty
(never drawn). Logit rows are N(0, s^2) for s = 1 (flat) and s = 4 (peaked; the largest
probabilities near 0.1-0.5, the smallest below 1e-20). Then the CPU time of one draw of
``--rows`` rows (one thread, median of 5).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from cgrpo.builtins.policies.token_draw import BLOCK, _block_sums, inverse_cdf_draw


def implied(kind: str, probs32: torch.Tensor) -> torch.Tensor:
    """(B, V) float64: the probability each token gets from the draw ``kind``."""
    if kind == "float64":
        cdf = probs32.double().cumsum(-1)
    elif kind == "float32":
        cdf = probs32.cumsum(-1).double()
    else:  # block shares of the float64 total, split inside by the block's own sums
        sums = _block_sums(probs32).double()
        b, v = probs32.shape
        pad = -v % BLOCK
        inside = torch.nn.functional.pad(probs32.double(), (0, pad)).view(b, -1, BLOCK)
        within = inside / inside.sum(-1, keepdim=True).clamp(min=1e-300)
        share = (sums / sums.sum(-1, keepdim=True)).unsqueeze(-1)
        return (within * share).view(b, -1)[:, :v]
    lengths = torch.diff(cdf, dim=-1, prepend=torch.zeros_like(cdf[:, :1]))
    return lengths / cdf[:, -1:]


def precision(logits: torch.Tensor) -> dict[str, dict[str, float]]:
    exact = torch.softmax(logits.double(), -1)
    probs32 = torch.softmax(logits.float(), -1)
    out = {}
    for kind in ("float64", "float32", "two-level"):
        p = implied(kind, probs32)
        out[kind] = {
            "tv": float(0.5 * (p - exact).abs().sum(-1).max()),
            "vanished_mass": float((exact * (p == 0)).sum(-1).max()),
        }
    return out


def float32_draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    cdf = probs.cumsum(-1)
    return torch.searchsorted(cdf, (u.float() * cdf[:, -1]).unsqueeze(-1), right=True)


def float64_draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    cdf = probs.cumsum(-1, dtype=torch.float64)
    return torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True)


def timings(rows: int, vocab: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(4 * torch.randn(rows, vocab, generator=gen), -1)
    u = torch.rand(rows, dtype=torch.float64, generator=gen)
    draws = {"float64": float64_draw, "float32": float32_draw, "two-level": inverse_cdf_draw}
    spent: dict[str, list[float]] = {k: [] for k in draws}
    for rep in range(5):
        for kind in draws if rep % 2 == 0 else list(reversed(draws)):
            started = time.process_time()
            draws[kind](probs, u)
            spent[kind].append(time.process_time() - started)
    return {k: statistics.median(v) for k, v in spent.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(1)
    record: dict = {"vocab": args.vocab, "rows": args.rows}
    for scale in (1.0, 4.0):
        logits = scale * torch.randn(8, args.vocab, generator=gen, dtype=torch.float64)
        record[f"logits_std_{scale:g}"] = found = precision(logits)
        for kind, r in found.items():
            print(f"logits N(0, {scale:g}^2), {kind:9s}: total variation {r['tv']:.1e}, "
                  f"mass never drawn {r['vanished_mass']:.1e}")  # fmt: skip
    record["cpu_s_per_draw"] = spent = timings(args.rows, args.vocab)
    print(f"one draw, {args.rows} x {args.vocab}, CPU-s (median of 5): "
          + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in spent.items()))  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
