"""Training rewards verified in worker processes: the same run with run.verify_workers 1
(in the trainer's process) and 2 (spawned workers) logs the same numbers."""

from __future__ import annotations

import json

from tests.helpers import REPO, run_cli

QUICKSTART = str(REPO / "recipes" / "quickstart-cpu.yaml")


def test_a_run_verified_by_workers_matches_the_run_verified_inline(tmp_path):
    common = [
        # 10 prompts x 7 samples: 70 responses a step, over the pool's 64
        "run.console=plain", "sft.steps=3", "train.steps=2", "data.task.options.size=40",
        "algorithm.prompts_per_step=10", "algorithm.micro_batch_size=40",
        "eval.every=2", "eval.size=8", f"model.path={tmp_path / 'tiny'}",
        f"run.output_dir={tmp_path / 'runs'}",
    ]  # fmt: skip
    lines = {}
    for workers in (1, 2):
        name = f"w{workers}"
        out = run_cli("run", QUICKSTART, *common, f"run.name={name}",
                      f"run.verify_workers={workers}", cwd=tmp_path)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        text = (tmp_path / "runs" / name / "metrics.jsonl").read_text()
        lines[name] = [
            {k: v for k, v in json.loads(x).items() if not k.startswith(("time/", "throughput/"))}
            for x in text.splitlines()
        ]
    log = (tmp_path / "runs" / "w2" / "train.log").read_text()
    assert "verifying math responses in 2 worker processes" in log
    assert "worker processes" not in (tmp_path / "runs" / "w1" / "train.log").read_text()
    assert lines["w1"] == lines["w2"]
    assert any("reward/initial_mean" in m for m in lines["w2"])
