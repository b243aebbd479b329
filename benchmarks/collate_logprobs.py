"""Sampler log-probs from the backend to the update batch: Python lists vs tensor rows.

    python benchmarks/collate_logprobs.py [--rows 1024] [--tokens 8192] [--reps 3]

The hf backend records each sampled token's log-probability in a (B, T) tensor. It used to
turn that into one Python list of floats per response (``tolist``), which ``collate`` turned
back into a tensor row by row; it now hands over rows of the tensor itself. This times the
whole way, with the real ``build_group`` and ``collate``: from the (B, T) tensor to the
(B, T) old log-probs of the update batch, both ways, alternating, wall and CPU seconds at
one thread. The token ids are lists either way (they are decoded and critiqued), so their
share (the EOS cut in ``build_group``, the list-to-tensor copy in ``collate``) is in both
numbers. At the paper's scale (1,024 responses of up to 8,192 tokens) the lists cost
seconds per step on the trainer's main thread.

Measured here (1 thread, 3 alternating reps): lists 3.61 s, tensor rows 2.62 s, before the
EOS cut used ``list.index`` and ``collate`` copied ids through an ``array`` buffer; after,
lists 2.02 s, tensor rows 0.73 s.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cgrpo.algo.mixing import build_group, collate
from cgrpo.types import Completion

EOS = 2


def rollout_rows(logprobs: torch.Tensor, ids: list[list[int]], as_lists: bool) -> list:
    """What the trainer holds after sampling: one row per response, as the backend gave it."""
    per_row = logprobs.tolist() if as_lists else logprobs
    rows = []
    for i, (tok, lp) in enumerate(zip(ids, per_row, strict=True)):
        comp = Completion(tok, lp, "", "length")
        rows += build_group(i, [1, 3], [comp], [0.0], [], [], [EOS])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    logprobs = -torch.rand(args.rows, args.tokens, generator=gen)
    ids = torch.randint(3, 100, (args.rows, args.tokens), generator=gen).tolist()
    times: dict[str, list[tuple[float, float]]] = {"lists": [], "tensor rows": []}
    batches = {}
    for _ in range(args.reps):
        for name in times:
            wall, cpu = time.perf_counter(), time.process_time()
            batch = collate(rollout_rows(logprobs, ids, name == "lists"), pad_id=0)
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
            batches[name] = batch.old_logprobs
    assert torch.equal(batches["lists"], batches["tensor rows"])  # the same numbers
    print(f"{args.rows} responses x {args.tokens} tokens, 1 thread, {args.reps} alternating reps")
    for name, runs in times.items():
        walls = [w for w, _ in runs]
        cpus = [c for _, c in runs]
        print(
            f"  {name:12s} wall s median {statistics.median(walls):.2f} "
            f"(min {min(walls):.2f}, max {max(walls):.2f}), "
            f"CPU s median {statistics.median(cpus):.2f}"
        )


if __name__ == "__main__":
    main()
