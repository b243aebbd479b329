"""Test helpers shared by several test modules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fake_distribution(root: Path, dist: str, entry_points: dict[str, str]) -> Path:
    """Make ``root`` an importable location holding a minimal installed distribution whose
    ``cgrpo`` entry points are ``entry_points`` -- real entry-point discovery, no pip."""
    info = root / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[cgrpo]\n{lines}\n")
    return root


def run_cli(
    *args: str,
    paths: list[Path] = (),
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Run the real ``cgrpo`` command line in a fresh interpreter."""
    full_env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    if paths:
        extra = os.pathsep.join(str(p) for p in paths)
        full_env["PYTHONPATH"] = extra + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "cgrpo", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )


def plan_setup(**overrides):
    """A :class:`cgrpo.model.memory_plan.Setup` with the paper recipe's settings on one GPU
    (bf16, checkpointing, 16k-token micro-batches, vLLM at 0.5), changed by ``overrides``."""
    from cgrpo.model.memory_plan import Setup

    base = dict(
        strategy="ddp",
        gpus=1,
        compute="bfloat16",
        lora_r=None,
        lora_targets=None,
        kl=False,
        checkpointing=True,
        micro_tokens=16384,
        chunk_tokens=512,
        backend="vllm",
        generation_batch=64,
        sample_len=8192,
        vllm_fraction=0.5,
        vllm_sleep=1,
    )
    return Setup(**{**base, **overrides})


def update_batch(rows: int, length: int, prompt: int = 4) -> tuple[list, object, object]:
    """``(rows, UpdateSettings, plan Setup)`` of one update on ``rows`` fixed sequences of
    ``length`` response tokens, all in one micro-batch: for measuring an update's peak
    memory against the memory plan (``plan_setup`` for the hf backend, ``compute`` and
    ``checkpointing`` still to choose)."""
    from cgrpo.algo.loss import LossConfig
    from cgrpo.algo.mixing import TrainRow
    from cgrpo.train.update import UpdateSettings

    data = [
        TrainRow(
            i // 2,
            list(range(5, 5 + prompt)),
            [(i * 7 + j) % 300 + 3 for j in range(length)],
            [-1.0] * length,
            False,
            0.5 - (i % 2),
        )
        for i in range(rows)
    ]
    settings = UpdateSettings(
        updates_per_step=1,
        micro_batch_size=rows,
        temperature=1.0,
        loss=LossConfig(entropy_coef=0.001, normalizer=float(length)),
        grad_clip=1.0,
    )
    setup = plan_setup(
        backend="hf",
        generation_batch=1,
        micro_tokens=rows * (prompt + length),
        sample_len=prompt + length,
    )
    return data, settings, setup
