"""Crash-safety trials through the real CLI (not CI tests: they take tens of minutes).

``kills``: SIGKILL a shortened quickstart run (tiny model created on the way, a warm-up
with checkpoints, RL steps with checkpoints) at random moments, resume it with
``resume=auto`` (killed again, ``--kills-per-trial`` times), let the last resume finish,
and compare its final weights bitwise with an uninterrupted run's. Each trial starts from
a model path that does not exist yet, so model creation is inside the window. Kill times:

- ``uniform``: a moment drawn uniformly over the uninterrupted run's wall time (start-up,
  model creation, warm-up, RL and checkpoint writes in proportion to their duration);
- ``create``: while the tiny model is being written (its temporary directory exists),
  after a uniform delay of 0-2 s;
- ``checkpoint``: while a checkpoint (warm-up or RL) is being written (its ``.tmp-step-``
  directory exists), after a uniform delay of 0-30 ms;
- ``step``: once this launch has logged a warm-up or RL step, after a uniform delay of
  0-2 s (inside training, whatever the machine's load does to start-up times);
- ``rl``: the same once it has logged an RL step.

Modes are drawn with the weights ``--weights`` gives (uniform:create:checkpoint:step:rl,
default 2:1:1:1:1) from a seeded RNG; a kill that finds the run already
ended is not counted. The phase a kill hit is read from the files present.

``fresh-starts``: ``torchrun --nproc_per_node 2 ... distributed.strategy=fsdp`` from a model
path that does not exist, again and again; every start must succeed.

    python benchmarks/kill_trial.py kills --kills 50 --json kills.json
    python benchmarks/kill_trial.py fresh-starts --starts 20 --json starts.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "recipes" / "quickstart-cpu.yaml")
SHORT = [
    "sft.steps=6", "sft.save_every=2", "sft.batch_size=8", "train.steps=4",
    "train.save_every=1", "data.task.options.size=60", "algorithm.prompts_per_step=2",
    "algorithm.micro_batch_size=16", "run.console=plain",
]  # fmt: skip
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}  # fmt: skip


def run_args(root: Path, name: str) -> list[str]:
    return ["run", QUICKSTART, *SHORT, f"model.path={root / f'tiny-{name}'}",
            f"run.output_dir={root / 'runs'}", f"run.name={name}", "resume=auto"]  # fmt: skip


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cgrpo", *args]
    return subprocess.Popen(
        cmd, env=ENV, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def final_weights(root: Path, name: str) -> dict:
    from safetensors.torch import load_file

    return load_file(root / "runs" / name / "checkpoints" / "step-4" / "model.safetensors")


def _transients(root: Path, name: str) -> tuple[set[Path], set[Path]]:
    """(temporary directories of a model being created, of checkpoints being written)."""
    ckpts = root / "runs" / name / "checkpoints"
    writing = {*ckpts.glob(".tmp-step-*"), *(ckpts / "sft").glob(".tmp-step-*")}
    return set(root.glob(f".tiny-{name}.creating-*")), writing


def creating(root: Path, name: str, before: set[Path]) -> bool:
    """Whether this launch is writing the model (a killed launch's leftovers are
    ``before``: their names hold the killed process's id)."""
    return bool(_transients(root, name)[0] - before)


def writing_checkpoint(root: Path, name: str, before: set[Path]) -> bool:
    return bool(_transients(root, name)[1] - before)


def _logged(root: Path, name: str, rl_only: bool = False) -> int:
    """Warm-up and RL steps logged so far (lines of sft_metrics.jsonl and metrics.jsonl)."""
    run = root / "runs" / name
    files = [run / "metrics.jsonl"] + ([] if rl_only else [run / "sft_metrics.jsonl"])
    return sum(len(f.read_text().splitlines()) for f in files if f.is_file())


def phase(root: Path, name: str, before: set[Path]) -> str:
    """What the run was doing, from the files this launch had written when it was killed."""
    run = root / "runs" / name
    if creating(root, name, before) and not (root / f"tiny-{name}").exists():
        return "model creation"
    if writing_checkpoint(root, name, before):
        return "checkpoint write"
    if not (root / f"tiny-{name}" / "config.json").exists():
        return "start-up"
    metrics = run / "metrics.jsonl"
    if metrics.is_file() and metrics.read_text().strip():
        return "RL"
    return "warm-up" if (run / "sft_metrics.jsonl").is_file() else "start-up"


def kill_once(
    root: Path, name: str, mode: str, rng: random.Random, span: float
) -> tuple[str | None, str]:
    """Start (or resume) the run and SIGKILL it as ``mode`` says: (the phase it hit, or
    None when the run ended before the kill; the mode used)."""
    if mode == "create" and (root / f"tiny-{name}" / "config.json").exists():
        mode = "uniform"  # a resumed run whose model exists: nothing to wait for
    before = set().union(*_transients(root, name))  # what killed launches left
    rl_only = mode == "rl"
    logged = _logged(root, name, rl_only)  # a line more than the fewest seen is this launch's
    proc = start(run_args(root, name), root)
    began = time.monotonic()
    waiting = {"create": creating, "checkpoint": writing_checkpoint}.get(mode)
    if mode in ("step", "rl"):
        while (now := _logged(root, name, rl_only)) <= logged and proc.poll() is None:
            logged = min(logged, now)  # cut back to the checkpoint's step on resume
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 2.0))
    elif waiting is None:
        deadline = began + rng.uniform(0, span)
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
    else:
        while not waiting(root, name, before) and proc.poll() is None:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 2.0) if mode == "create" else rng.uniform(0, 0.03))
    if proc.poll() is not None:
        proc.communicate()
        return None, mode
    hit = phase(root, name, before)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return hit, mode


def kills(args: argparse.Namespace) -> dict:
    root = Path(args.dir or tempfile.mkdtemp(prefix="kill-trial-"))
    root.mkdir(parents=True, exist_ok=True)  # --dir may name a new directory
    rng = random.Random(args.seed)
    began = time.monotonic()
    ref = subprocess.run([sys.executable, "-m", "cgrpo", *run_args(root, "ref")], env=ENV,
                         cwd=root, capture_output=True, text=True)  # fmt: skip
    span = time.monotonic() - began
    if ref.returncode != 0:
        raise SystemExit(f"the uninterrupted run failed:\n{ref.stdout}{ref.stderr}")
    reference = final_weights(root, "ref")
    print(f"uninterrupted run: {span:.1f} s wall; kill times drawn over [0, {span:.1f}] s")
    out = {"kills": 0, "trials": 0, "bitwise_equal": 0, "modes": {}, "phases": {},
           "failures": [], "span_s": span, "seed": args.seed}  # fmt: skip
    trial = 0
    while out["kills"] < args.kills:
        name = f"t{trial}"
        trial += 1
        for _ in range(args.kills_per_trial):
            modes = ["uniform", "create", "checkpoint", "step", "rl"]
            mode = rng.choices(modes, args.weights)[0]
            hit, mode = kill_once(root, name, mode, rng, span)
            if hit is None:
                continue
            out["kills"] += 1
            out["modes"][mode] = out["modes"].get(mode, 0) + 1
            out["phases"][hit] = out["phases"].get(hit, 0) + 1
            print(f"trial {name}: kill {out['kills']} ({mode}) during {hit}", flush=True)
        done = subprocess.run([sys.executable, "-m", "cgrpo", *run_args(root, name)], env=ENV,
                              cwd=root, capture_output=True, text=True)  # fmt: skip
        out["trials"] += 1
        same = False
        if done.returncode == 0:
            w = final_weights(root, name)
            import torch

            same = w.keys() == reference.keys() and all(torch.equal(w[k], reference[k]) for k in w)
        out["bitwise_equal"] += same
        if not same:
            out["failures"].append({"trial": name, "rc": done.returncode,
                                    "tail": (done.stdout + done.stderr)[-2000:]})  # fmt: skip
        print(f"trial {name}: resumed rc={done.returncode}, bitwise equal: {same}", flush=True)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_starts(args: argparse.Namespace) -> dict:
    root = Path(args.dir or tempfile.mkdtemp(prefix="fresh-starts-"))
    root.mkdir(parents=True, exist_ok=True)  # --dir may name a new directory
    out = {"starts": 0, "succeeded": 0, "failures": [], "wall_s": []}
    for i in range(args.starts):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "cgrpo",
               "run", QUICKSTART, "sft.steps=2", "train.steps=1", "data.task.options.size=40",
               "algorithm.prompts_per_step=2", "algorithm.micro_batch_size=16",
               "run.console=plain", "distributed.strategy=fsdp", f"model.path={root / f'm{i}'}",
               f"run.output_dir={root / 'runs'}", f"run.name=s{i}"]  # fmt: skip
        began = time.monotonic()
        proc = subprocess.run(cmd, env=ENV, cwd=root, capture_output=True, text=True)
        out["wall_s"].append(round(time.monotonic() - began, 1))
        out["starts"] += 1
        ok = proc.returncode == 0
        out["succeeded"] += ok
        if not ok:
            out["failures"].append({"start": i, "rc": proc.returncode,
                                    "tail": (proc.stdout + proc.stderr)[-2000:]})  # fmt: skip
        print(f"start {i + 1}/{args.starts}: rc={proc.returncode} "
              f"({out['wall_s'][-1]} s)", flush=True)  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    k = sub.add_parser("kills", help="random SIGKILLs, resume, bitwise comparison")
    k.add_argument("--kills", type=int, default=50)
    k.add_argument("--kills-per-trial", type=int, default=2)
    k.add_argument("--seed", type=int, default=0)
    k.add_argument(
        "--weights", type=lambda t: [float(w) for w in t.split(":")], default=[2, 1, 1, 1, 1],
        help="how often each mode is drawn, uniform:create:checkpoint:step:rl (default "
        "2:1:1:1:1)",
    )  # fmt: skip
    f = sub.add_parser("fresh-starts", help="2-rank fsdp starts from a missing model")
    f.add_argument("--starts", type=int, default=20)
    for s in (k, f):
        s.add_argument("--dir", help="work directory (default: a new temporary one)")
        s.add_argument("--json", help="write the results here")
    args = p.parse_args()
    result = kills(args) if args.what == "kills" else fresh_starts(args)
    shown = {k: v for k, v in result.items() if k != "failures"}
    print(json.dumps(shown, indent=1))
    for failure in result["failures"]:
        print(f"--- failed: {failure}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
