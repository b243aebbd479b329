"""Time one GRPO step and one Critique-GRPO step of the hf backend on a fixed tiny model.

    python benchmarks/step_time.py [--steps 5] [--prompts 8] [--samples 8] [--new-tokens 32]
                                   [--reproducible] [--lora] [--fsdp]

Prints seconds per step (mean over ``--steps`` after one warm-up step), the split by stage,
sampled tokens per second and peak memory (process RSS; CUDA peak when on GPU); then the
two kinds again, one step of each in turn, and the ratio of their CPU-seconds pair by pair
(the machine is shared: alternating makes its drift hit both alike). The model
is created offline (hidden 128, 2 layers, the quickstart's shape; ``--hidden`` and
``--layers`` make it larger); nothing is downloaded. ``--lora`` adds a GRPO
step that trains rank-16 LoRA adapters on every linear layer instead of all weights.
``--fsdp`` adds a GRPO step of 2 processes (torchrun, gloo on CPU) under
``distributed.strategy: fsdp`` and, to separate the cost of sharding from that of a second
process, the same under ddp; each process has ``--threads`` threads and half the prompts.
Run it alone: another torch process on a 2-core machine distorts the numbers badly.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def recipe_for(
    model_dir: Path,
    out: Path,
    name: str,
    args,
    refinements: int,
    lora: bool = False,
    strategy: str = "ddp",
    warmup: int = 1,
):
    from cgrpo.config.validate import validate_recipe

    g = args.samples - refinements
    raw = {
        "run": {
            "name": name,
            "output_dir": str(out),
            "console": "plain",
            "reproducible_sampling": args.reproducible,
        },
        "model": {
            "path": str(model_dir),
            "max_length": 512,
            "device": args.device,
            "lora": {"r": 16, "alpha": 32} if lora else None,
        },
        "data": {
            "task": {"name": "arithmetic", "options": {"size": 500}},
            "prompt": {"suffix": "", "max_prompt_tokens": 64},
        },
        "sampling": {"max_new_tokens": args.new_tokens},
        "algorithm": {
            "prompts_per_step": args.prompts,
            "samples_per_prompt": g,
            "refinements_per_prompt": refinements,
            "refine": "all",
            "micro_batch_size": args.prompts * args.samples // args.world,
        },
        "refinement": {"max_critique_tokens": 64},
        "optim": {"lr": 1e-5},
        "train": {"steps": warmup + args.steps, "log_samples": 0},
        "distributed": {"strategy": strategy},
    }
    return validate_recipe(raw)


def make_trainer(
    kind: str,
    refinements: int,
    model_dir: Path,
    out: Path,
    args,
    lora: bool = False,
    strategy: str = "ddp",
    warmup: int = 1,
):
    """A trainer for ``kind`` that has run ``warmup`` steps (allocator, kernels, caches);
    its next step is ``warmup + 1``."""
    from cgrpo.app.build import build
    from cgrpo.plugins import get_registries
    from cgrpo.train.loop import Trainer

    recipe = recipe_for(model_dir, out, kind, args, refinements, lora, strategy, warmup)
    built = build(recipe, get_registries(), None)
    (out / kind).mkdir(parents=True, exist_ok=True)
    trainer = Trainer(recipe, built, out / kind)
    for step in range(1, warmup + 1):
        trainer.step(step)
    return trainer


def _clock(device_type: str):
    """(unit, now) of benchmarks/packing.py's clock: CPU-seconds on CPU, wall seconds after
    a synchronize on CUDA."""
    from packing import clock

    return ("wall s" if device_type == "cuda" else "CPU-s"), clock(device_type)


class RefinementPrefill:
    """Keeps the refinement prompts a trainer's hf policy is asked to generate from, and
    times a forward of them: the prefill ``generate`` starts with, work a GRPO step does
    not do."""

    def __init__(self, policy):
        self.policy = policy
        self.prompts: list[list[int]] = []
        inner = policy.generate_stream

        def capturing(prompts, params, seeds=None):
            if params.n == 1:  # the refinements (initial samples come G > 1 per prompt)
                self.prompts = [list(p) for p in prompts]
            return inner(prompts, params, seeds)

        policy.generate_stream = capturing

    def seconds(self, now) -> float:
        """Seconds by ``now`` of one no-grad forward of the last step's refinement prompts,
        left padded and with the key/value cache on, as ``generate``'s prefill runs them."""
        import torch

        from cgrpo.builtins.policies.hf import left_pad

        if not self.prompts:
            return 0.0
        model = self.policy.model
        ids, mask = left_pad(self.prompts, self.policy.pad_id)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            started = now()
            with torch.no_grad(), self.policy.precision.autocast():
                model(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    use_cache=True,
                    logits_to_keep=1,
                )
            return now() - started
        finally:
            model.train(was_training)


def ratio_alternating(model_dir: Path, out: Path, args) -> None:
    """A GRPO step and a Critique-GRPO step taken in turn, ``--steps`` of each: the ratio
    of their CPU-seconds (wall seconds on CUDA) pair by pair, so that the machine's drift
    hits both alike.

    Then a lower bound on that ratio from the work alone: a Critique-GRPO step with every
    group failing does a GRPO step's work with G instead of N initial samples, plus a
    prefill of its refinement prompts (timed on its own, after the step) plus the decoding
    of one sequence per refinement, which costs at least what decoding its G initial
    samples cost (as many sequences, the same number of new tokens, shorter contexts)."""

    trainers = {
        "grpo": make_trainer("grpo", 0, model_dir, out, args),
        "critique-grpo": make_trainer("critique-grpo", 1, model_dir, out, args),
    }
    policy = trainers["critique-grpo"].b.policy
    prefill = RefinementPrefill(policy)
    unit, now = _clock(next(policy.model.parameters()).device.type)
    spent: dict[str, list[float]] = {k: [] for k in trainers}
    rows: dict[str, list[dict]] = {k: [] for k in trainers}
    prefill_spent: list[float] = []
    for s in range(2, args.steps + 2):
        order = list(trainers) if s % 2 == 0 else list(reversed(trainers))
        for kind in order:
            started = now()
            rows[kind].append(trainers[kind].step(s))
            spent[kind].append(now() - started)
            if kind == "critique-grpo":
                prefill_spent.append(prefill.seconds(now))
    for kind in trainers:
        stages = "  ".join(
            f"{st} {statistics.median(r.get('time/' + st, 0.0) for r in rows[kind]):.3f}s"
            for st in ("sample", "verify", "critique", "refine", "update")
        )
        print(
            f"{kind:14s} {unit} {statistics.median(spent[kind]):.3f} per step (median)  [{stages}]"
        )
    ratios = [c / g for c, g in zip(spent["critique-grpo"], spent["grpo"], strict=True)]
    # the tiny model solves nothing, so every group fails and every response is critiqued
    # and refined: the worst case of Critique-GRPO's extra cost
    print(
        f"critique-grpo / grpo {unit} per step (every group failing): median "
        f"{statistics.median(ratios):.2f}x (min {min(ratios):.2f}x, max {max(ratios):.2f}x, "
        f"{len(ratios)} alternating pairs)"
    )
    crit = rows["critique-grpo"]

    def med(key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in crit)

    print(
        f"work of a critique-grpo step: {med('refine/generated'):.0f} refinements of "
        f"{med('length/refinement_mean'):.0f} tokens from prompts of "
        f"{med('length/refinement_prompt_mean'):.0f} tokens, beside "
        f"{args.prompts * (args.samples - 1)} initial samples of "
        f"{med('length/initial_mean'):.0f} tokens from prompts of {med('length/prompt_mean'):.0f}"
    )
    # per pair: GRPO's seconds, less the sampling of its N - G extra initial samples, plus
    # the refinements' prefill and at least the decoding cost of G samples per prompt
    # (stage times are wall seconds; on CPU, with one thread, they track CPU-seconds)
    floors = []
    pairs = zip(spent["grpo"], rows["grpo"], crit, prefill_spent, strict=True)
    for grpo_s, g_row, c_row, pre in pairs:
        sample_n, sample_g = g_row["time/sample"], c_row["time/sample"]
        floors.append((grpo_s - sample_n + 2 * sample_g + pre) / grpo_s)
    print(
        f"refinement prefill alone: {statistics.median(prefill_spent):.3f} {unit} per step; lower "
        f"bound on the ratio from that work: median {statistics.median(floors):.2f}x (min "
        f"{min(floors):.2f}x, max {max(floors):.2f}x)"
    )


def bench(
    kind: str,
    refinements: int,
    model_dir: Path,
    out: Path,
    args,
    lora: bool = False,
    strategy: str = "ddp",
) -> None:
    import torch

    from cgrpo.model import distributed

    trainer = make_trainer(kind, refinements, model_dir, out, args, lora, strategy)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    rows = [trainer.step(s) for s in range(2, args.steps + 2)]
    for writer in (trainer.metrics_out, trainer.samples_out):
        if writer is not None:  # rank 0 only
            writer.close()
    if not distributed.is_main():
        return

    def mean(key):
        vals = [r[key] for r in rows if key in r]
        return statistics.mean(vals) if vals else 0.0

    stages = "  ".join(
        f"{s} {mean('time/' + s):.3f}s"
        for s in ("sample", "verify", "critique", "refine", "update")
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    line = (
        f"{kind:14s} {mean('time/step'):.3f} s/step  "
        f"{mean('throughput/sampled_tokens_per_s'):.0f} sampled tok/s  [{stages}]  "
        f"peak RSS {rss:.0f} MiB"
    )
    if torch.cuda.is_available():
        line += f"  CUDA peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
    print(line, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--samples", type=int, default=8, help="group size N (G + K)")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--hidden", type=int, default=128, help="the model's hidden size")
    p.add_argument("--layers", type=int, default=2, help="the model's decoder layers")
    p.add_argument(
        "--reproducible",
        action="store_true",
        help="run.reproducible_sampling: true (each prompt's samples seeded on their own)",
    )
    p.add_argument("--lora", action="store_true", help="also time a GRPO step with LoRA")
    p.add_argument("--fsdp", action="store_true", help="also time 2 processes, fsdp and ddp")
    p.add_argument("--worker", choices=["fsdp", "ddp"], help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.worker:  # one rank of a torchrun launched by --fsdp
        _worker(args)
        return

    import torch

    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from cgrpo.model.tiny import create_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = create_tiny_model(
            Path(tmp) / "model",
            hidden_size=args.hidden,
            num_layers=args.layers,
            num_heads=max(4, args.hidden // 64),  # head size 64 from hidden 256 up
            num_kv_heads=max(2, args.hidden // 256),
            intermediate_size=2 * args.hidden,
        )
        print(
            f"{args.prompts} prompts x {args.samples} sequences, {args.new_tokens} new tokens, "
            f"torch threads {args.threads}, {args.steps} timed steps, model hidden "
            f"{args.hidden} x {args.layers} layers"
        )
        bench("grpo", 0, model_dir, Path(tmp) / "runs", args)
        bench("critique-grpo", 1, model_dir, Path(tmp) / "runs", args)
        ratio_alternating(model_dir, Path(tmp) / "alternating", args)
        if args.lora:
            bench("grpo-lora", 0, model_dir, Path(tmp) / "runs", args, lora=True)
        if args.fsdp:
            for strategy in ("ddp", "fsdp"):
                _launch_two(strategy, model_dir, args)


def _launch_two(strategy: str, model_dir: Path, args) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={port}", __file__,
        "--worker", strategy, "--model-dir", str(model_dir), "--steps", str(args.steps),
        "--prompts", str(args.prompts), "--samples", str(args.samples),
        "--new-tokens", str(args.new_tokens), "--device", args.device,
        "--threads", str(args.threads),
    ]  # fmt: skip
    if args.reproducible:
        cmd.append("--reproducible")
    subprocess.run(cmd, check=True)


def _worker(args) -> None:
    import torch

    from cgrpo.model import distributed

    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    distributed.setup("auto", args.worker)
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"  # rank-local; the benchmark writes no checkpoints
        bench(f"grpo-2x{args.worker}", 0, Path(args.model_dir), runs, args, strategy=args.worker)
    distributed.teardown()


if __name__ == "__main__":
    main()
