"""Evaluation speed: problems per second of ``cgrpo eval`` with the hf and vllm backends,
the share of time spent verifying, and math verification in one process vs worker
processes on 1,024 responses (128 problems x 8 samples).

    python benchmarks/eval_speed.py [--problems 200] [--k 4] [--new-tokens 32]
                                    [--verify-problems 128] [--verify-k 8] [--workers 2]
                                    [--reps 2] [--skip-vllm] [--skip-cli]

Part 1 runs the real CLI (``cgrpo eval MODEL --benchmarks arithmetic-test``) on a tiny
model created offline, alternating the backends over ``--reps`` repetitions, and reads
``time/eval`` and ``time/eval_verify`` from each eval.json. The tiny model's responses are
junk, so verification is cheap there; part 2 measures verification alone on MATH-style
responses (fractions, radicals, intervals, half of them wrong; the timeout path is
tests/unit/test_evaluation.py's) with the
``math`` verifier, in this process and in ``--workers`` spawned workers already started
(as in a training run, where they start once), wall and CPU seconds each, alternating; and
the same with the verifier's fast path off (every pair through sympy), which is what the
verifier cost before it. Needs vLLM for the vllm rows (skipped without it). Run it alone on
the machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

ANSWERS = ["\\frac{3}{4}", "2\\sqrt{3}", "[1, 5)", "\\frac{\\pi}{6}", "17", "-2", "x^2 + 1",
           "0.125", "\\dfrac{7}{2}", "(2, -1)"]  # fmt: skip


def cli_eval(model: Path, backend: str, args, out: Path) -> dict:
    extra = ["policy.options.kv_cache_memory_bytes=268435456"] if backend == "vllm" else []
    benchmark = f"eval.benchmarks=[{{name: arithmetic-test, options: {{size: {args.problems}}}}}]"
    cmd = [sys.executable, "-m", "cgrpo", "eval", str(model), *extra, benchmark,
           f"sampling.max_new_tokens={args.new_tokens}", "--k", str(args.k),
           "--backend", backend, "--out", str(out)]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"cgrpo eval ({backend}) failed:\n{done.stderr[-2000:]}")
    report = json.loads((out / "eval.json").read_text())
    m = report["metrics"]
    return {
        "problems": report["problems"],
        "eval_s": m["time/eval"],
        "verify_s": m["time/eval_verify"],
        "process_s": time.perf_counter() - started,
    }


def synthetic_pairs(problems: int, k: int, seed: int = 0):
    from cgrpo.types import Problem

    rng = random.Random(seed)
    pairs = []
    for i in range(problems):
        gold = rng.choice(ANSWERS)
        problem = Problem(str(i), "q", gold)
        for _ in range(k):
            roll = rng.random()
            pred = gold if roll < 0.5 else rng.choice(ANSWERS)
            text = "Some reasoning ... so the final answer is \\boxed{" + pred + "}."
            pairs.append((text, problem))
    return pairs


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def verify_timing(args) -> None:
    from cgrpo.builtins.verifiers import math as math_verifier
    from cgrpo.train.verify_pool import VerifyPool

    pairs = synthetic_pairs(args.verify_problems, args.verify_k)
    verifier = math_verifier.MathVerifier()
    print(f"\nverification of {len(pairs)} MATH-style responses "
          f"({args.verify_problems} problems x {args.verify_k}), math verifier")  # fmt: skip
    print(f"{'mode':<34}{'wall s':>9}{'cpu s':>9}{'responses/s':>14}")
    pool = VerifyPool(args.workers)
    # warm: workers started and every reference parsed once (cached), in both modes, as
    # in a run after its first step
    pool.verify(verifier, ("math", {}), pairs)
    VerifyPool(1).verify(verifier, ("math", {}), pairs)
    fast = math_verifier.quick_compare
    modes = [
        ("one process", VerifyPool(1), fast),
        (f"{args.workers} workers", pool, fast),
        ("one process, no fast path", VerifyPool(1), lambda gold, pred: None),
    ]
    counts: dict[str, set[int]] = {}
    times: dict[str, list[float]] = {}
    for rep in range(args.reps):
        for label, runner, quick in modes:
            math_verifier.quick_compare = quick  # this process only: workers keep theirs
            wall, cpu = time.perf_counter(), cpu_seconds()
            verdicts = runner.verify(verifier, ("math", {}), pairs)
            wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
            math_verifier.quick_compare = fast
            counts.setdefault(label, set()).add(sum(v.correct for v in verdicts))
            times.setdefault(label, []).append(wall)
            rate = len(pairs) / wall
            print(f"{label:<34}{wall:>9.2f}{cpu:>9.2f}{rate:>14.0f}  (rep {rep + 1})")
    pool.close()
    medians = {label: statistics.median(ts) for label, ts in times.items()}
    serial, parallel = medians["one process"], medians[f"{args.workers} workers"]
    print(f"median wall s: {', '.join(f'{k} {v:.2f}' for k, v in medians.items())}; "
          f"pool speed-up {serial / parallel:.2f}x")  # fmt: skip
    print(f"correct counts per mode (must agree): {counts}")
    print("(workers' cpu seconds are counted when they exit: the 'cpu s' of worker rows is "
          "this process's share only)")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problems", type=int, default=200)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--verify-problems", type=int, default=128)
    p.add_argument("--verify-k", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--skip-vllm", action="store_true")
    p.add_argument("--skip-cli", action="store_true", help="only the verification part")
    args = p.parse_args()
    if args.skip_cli:
        verify_timing(args)
        return

    from cgrpo.model.tiny import create_tiny_model

    backends = ["hf"]
    if not args.skip_vllm and importlib.util.find_spec("vllm") is not None:
        backends.append("vllm")
    with tempfile.TemporaryDirectory() as tmp:
        model = create_tiny_model(Path(tmp) / "tiny")
        print(
            f"cgrpo eval on arithmetic-test: {args.problems} problems, greedy + k={args.k}, "
            f"{args.new_tokens} new tokens, tiny model (junk answers: cheap to verify)"
        )
        print(f"{'backend':<8}{'problems/s':>12}{'eval s':>9}{'verify share':>14}{'process s':>11}")
        for rep in range(args.reps):
            for backend in backends:  # alternating: the machine's noise hits both
                r = cli_eval(model, backend, args, Path(tmp) / f"{backend}-{rep}")
                print(f"{backend:<8}{r['problems'] / r['eval_s']:>12.1f}{r['eval_s']:>9.2f}"
                      f"{r['verify_s'] / r['eval_s']:>14.1%}{r['process_s']:>11.1f}")  # fmt: skip
        if "vllm" not in backends:
            print("(vllm: not installed or --skip-vllm)")
    verify_timing(args)


if __name__ == "__main__":
    main()
