"""A mixture of two tasks through the real CLI: per-source metrics, each source scored by
its own verifier, and a SIGKILL mid-run resumed to bitwise the same weights."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import REPO, run_cli

pytestmark = pytest.mark.slow
QUICKSTART = str(REPO / "recipes" / "quickstart-cpu.yaml")
MIXTURE = (
    "data.task.options={size: 60, sources: ["
    "{name: arithmetic, options: {size: 40, digits: 1}, weight: 2, label: plus}, "
    "{name: arithmetic, options: {size: 40, digits: 1, ops: ['-'], seed: 7}, label: minus, "
    "template: 'Subtract. {question}', verifier: {name: exact}}]}"
)


def args(root, name, *extra):
    return [
        "run", QUICKSTART, "data.task.name=mixture", MIXTURE, "sft.steps=3", "train.steps=3",
        "train.save_every=1", "algorithm.prompts_per_step=4", "algorithm.micro_batch_size=16",
        "run.console=plain", f"model.path={root / 'tiny'}",
        f"run.output_dir={root / 'runs'}", f"run.name={name}", *extra,
    ]  # fmt: skip


def test_a_mixture_run_logs_each_source_and_resumes_exactly(tmp_path):
    ref = run_cli(*args(tmp_path, "ref"), cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr[-3000:]
    run = tmp_path / "runs" / "ref"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in lines if "reward/initial_mean" in m]
    seen = {k for m in steps for k in m}
    assert {"reward/plus/initial_mean", "reward/minus/initial_mean"} <= seen
    log = (run / "train.log").read_text()
    assert "mixture of 60 problems: plus 40, minus 20" in log
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert any("Subtract. What is" in s["question"] for s in samples)

    crashed = run_cli(*args(tmp_path, "kill"), cwd=tmp_path, env={"CGRPO_CRASH_AT": "step:2"})
    assert crashed.returncode == -signal.SIGKILL
    resumed = run_cli(*args(tmp_path, "kill", "resume=auto"), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (load_file(tmp_path / "runs" / n / "checkpoints" / "step-3" / "model.safetensors")
            for n in ("ref", "kill"))  # fmt: skip
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
