"""The ladder's one command end to end, CPU-sized: ``benchmarks/paper_table.py ladder`` for
one seed and a few steps runs the shared warm-up and the five rows through the real
``cgrpo`` CLI, prints the table (each row, the paper's number, the warm model's line) and
writes its numbers; each row's run shows its own step of the ladder in its metrics; a
second call reuses the finished runs and prints the same table without running anything.
The full ladder (80 RL steps, 3 seeds) is not for CI: recipes/paper/README.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow
# a few steps of every run: 4 prompts per step (a mini-batch of 4 x 8 rows), short evals
QUICK = [
    "sft.steps=2", "train.steps=2", "eval.every=2", "eval.size=4",
    "algorithm.prompts_per_step=4", "algorithm.micro_batch_size=16",
]  # fmt: skip
ROWS = ["1-r1-grpo-kl", "2-no-kl", "3-random-refinement", "4-quality-selection", "5-shaping"]


def table(out, json_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, str(REPO / "benchmarks" / "paper_table.py"), "ladder"]
    args += ["--seeds", "0", "--jobs", "2", "--out", str(out), "--json", str(json_path)]
    done = subprocess.run([*args, "--set", *QUICK], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def first_update(run_dir):
    """The metrics of the run's first training step."""
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if "loss/total" in entry:
            return entry
    raise AssertionError(f"{run_dir} has no training step")


def test_the_ladder_command_runs_every_row_and_prints_the_table(tmp_path):
    out = tmp_path / "tables"
    printed = table(out, tmp_path / "ladder.json")
    lines = printed.splitlines()
    for label, paper in [
        ("1. R1-GRPO (with KL)", ""), ("2. - KL", "+1.5 over row 1"),
        ("3. + one random refinement", "43.26"), ("4. + selection by quality", "43.95"),
        ("5. + shaping f(p) = p/(p+0.1)", "47.08"),
    ]:  # fmt: skip
        row = next(line for line in lines if line.startswith(f"| {label} |"))
        assert row.endswith(f"| {paper} |"), row
    assert any(line.startswith("| warm model (step 0), all rows |") for line in lines)
    assert "6 runs:" in printed  # the warm-up and the five rows
    data = json.loads((tmp_path / "ladder.json").read_text())
    assert [len(r["values"]) for r in data["rows"]] == [1] * 5
    assert all(0.0 <= r["values"][0] <= 1.0 for r in data["rows"])

    runs = {row: first_update(out / f"ladder-ablation-{row}-cpu-s0") for row in ROWS}
    assert "loss/kl" in runs["1-r1-grpo-kl"]  # only row 1 has the KL
    assert not any("loss/kl" in runs[row] for row in ROWS[1:])
    assert runs["2-no-kl"]["refine/kept"] == 0 and runs["3-random-refinement"]["refine/kept"] > 0
    for row in ("3-random-refinement", "4-quality-selection"):  # shaping.mode p: weight = p
        assert runs[row]["refine/shaped_weight_mean"] == pytest.approx(
            runs[row]["refine/token_prob_mean"]
        )
    shaped = runs["5-shaping"]  # gamma p / (p + gamma)^2, about 10 p for p << 0.1
    assert shaped["refine/shaped_weight_mean"] > 2 * shaped["refine/token_prob_mean"]
    warm = out / "ladder-warm-s0" / "checkpoints" / "step-0"
    for row in ROWS:  # every row started from the seed's one warm-up
        assert (
            f"path: {warm}" in (out / f"ladder-ablation-{row}-cpu-s0" / "recipe.yaml").read_text()
        )

    again = table(out, tmp_path / "again.json")  # finished runs are reused
    assert "0 runs:" in again
    assert again.split("\n0 runs:")[0] == printed.split("\n6 runs:")[0]
