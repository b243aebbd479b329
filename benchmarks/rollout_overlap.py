"""How much of the critique stage the rollout hides behind sampling: a Critique-GRPO step
with the ``openai`` critic against a local server, overlapped (each group's critiques go
out as soon as it is verified) and serial (all critiques after all sampling).

    python benchmarks/rollout_overlap.py [--steps 3] [--reps 2] [--latency 0.25]
                                         [--concurrency 16] [--prompts 16]

The hf backend generates ``--generation-batch`` sequences per call, so a step samples in
several calls and finished groups are handed over after each. Every group of the tiny
model fails, so every response is critiqued. The overlap can hide the part of the
critique stage that is limited by concurrency or rate (more requests than
``concurrency``); the last group's critiques still start after the last sample, so one
request latency always remains. "Serial" is the same step with the critic's
``critique_async`` taken away. Settings alternate over ``--reps``; the server is
tests/fake_openai.py on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.fake_openai

STAGES = ("sample", "verify", "critique", "refine", "update", "step")


def recipe(model_dir: Path, out: Path, base_url: str, args):
    from cgrpo.config.validate import validate_recipe

    g = args.samples - 1
    return validate_recipe(
        {
            "run": {"name": "overlap", "output_dir": str(out), "console": "plain"},
            "model": {"path": str(model_dir), "max_length": 512, "device": "cpu"},
            "data": {
                "task": {"name": "arithmetic", "options": {"size": 500}},
                "prompt": {"suffix": "", "max_prompt_tokens": 64},
            },
            "policy": {"name": "hf", "options": {"generation_batch_size": args.generation_batch}},
            "critic": {
                "name": "openai",
                "options": {
                    "base_url": base_url,
                    "api_key_env": None,
                    "cache": False,
                    "model": "fake",
                    "concurrency": args.concurrency,
                },
            },
            "sampling": {"max_new_tokens": args.new_tokens},
            "algorithm": {
                "prompts_per_step": args.prompts,
                "samples_per_prompt": g,
                "refinements_per_prompt": 1,
                "refine": "failed_groups",
                "micro_batch_size": args.prompts * args.samples,
            },
            "refinement": {"max_critique_tokens": 64},
            "optim": {"lr": 1e-5},
            "train": {"steps": args.steps + 1, "log_samples": 0},
        }
    )


def run(mode: str, model_dir: Path, base_url: str, args) -> dict[str, float]:
    from cgrpo.app.build import build
    from cgrpo.plugins import get_registries
    from cgrpo.train.loop import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        r = recipe(model_dir, Path(tmp), base_url, args)
        built = build(r, get_registries(), None)
        if mode == "serial":
            built.critic.critique_async = None  # the rollout then critiques after sampling
        (Path(tmp) / "run").mkdir()
        trainer = Trainer(r, built, Path(tmp) / "run")
        trainer.step(1)  # warm-up
        rows = [trainer.step(s) for s in range(2, args.steps + 2)]
        trainer.metrics_out.close()
        trainer.samples_out.close()
        built.critic.close()
    out = {s: statistics.mean(row.get(f"time/{s}", 0.0) for row in rows) for s in STAGES}
    out["requests"] = statistics.mean(row.get("critique/requested", 0.0) for row in rows)
    out["latency_sum"] = statistics.mean(row.get("critique/latency_s_sum", 0.0) for row in rows)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--latency", type=float, default=0.25)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--samples", type=int, default=8, help="group size N (G + 1)")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--generation-batch", type=int, default=16)
    args = p.parse_args()

    import torch

    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from cgrpo.model.tiny import create_tiny_model
    from tests.fake_openai import FakeOpenAI

    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI(latency_s=args.latency) as server:
        model_dir = create_tiny_model(Path(tmp) / "model")
        print(
            f"{args.prompts} prompts x {args.samples}, {args.generation_batch} sequences per "
            f"generate call, critic latency {args.latency} s, concurrency {args.concurrency}"
        )
        print(f"{'mode':>9}" + "".join(f"{s:>10}" for s in STAGES) + f"{'requests':>10}")
        results: dict[str, list[float]] = {"overlapped": [], "serial": []}
        for rep in range(args.reps):
            modes = ("overlapped", "serial") if rep % 2 == 0 else ("serial", "overlapped")
            for mode in modes:
                got = run(mode, model_dir, server.base_url, args)
                results[mode].append(got["step"])
                print(
                    f"{mode:>9}"
                    + "".join(f"{got[s]:>10.3f}" for s in STAGES)
                    + f"{got['requests']:>10.0f}"
                )
        over, serial = (statistics.median(results[m]) for m in ("overlapped", "serial"))
        print(f"step time overlapped / serial: {over / serial:.2f}x (medians over reps)")


if __name__ == "__main__":
    main()
