"""The paper's baselines through the real CLI on a tiny model: a LUFFY step (the reference
solution in each group, in packed micro-batches) and a RAFT step, each one step from a
fresh tiny model; the LUFFY run's saved recipe checks again."""

import json

import pytest

from tests.helpers import REPO, run_cli

pytestmark = pytest.mark.slow
RECIPE = str(REPO / "recipes" / "quickstart-cpu.yaml")
SHORT = ["sft.steps=0", "train.steps=1", "data.task.options.size=20", "run.console=plain",
         "algorithm.prompts_per_step=2", "algorithm.micro_batch_size=2"]  # fmt: skip


def _run(tmp_path, name, *overrides, recipe=RECIPE, short=SHORT):
    out = run_cli("run", recipe, *short, f"run.name={name}", *overrides,
                  f"model.path={tmp_path / 'tiny'}", f"run.output_dir={tmp_path / 'runs'}",
                  cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    run = tmp_path / "runs" / name
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    return metrics, samples


def test_luffy_and_raft_steps(tmp_path):
    packed = tmp_path / "packed.yaml"  # micro_batch_tokens in place of micro_batch_size
    text = (REPO / "recipes" / "quickstart-cpu.yaml").read_text()
    packed.write_text(text.replace("micro_batch_size: 32", "micro_batch_tokens: 512"))
    short = [s for s in SHORT if "micro_batch_size" not in s]
    metrics, samples = _run(tmp_path, "luffy", "algorithm.demonstrations.per_group=1",
                            "algorithm.refinements_per_prompt=0", recipe=str(packed),
                            short=short)  # fmt: skip
    demos = [s for s in samples if s["kind"] == "demonstration"]
    assert len(demos) == 2 and all(s["trained"] and s["reward"] == 1.0 for s in demos)
    assert metrics["demonstration/count"] == 2.0 and "entropy/demonstration" in metrics
    assert "demonstration/shaped_weight_mean" in metrics
    assert metrics["update/token_utilization"] == 1.0  # packed: no padding
    saved = run_cli("check", str(tmp_path / "runs" / "luffy" / "recipe.yaml"), cwd=tmp_path)
    assert saved.returncode == 0, saved.stdout + saved.stderr
    raft = ["algorithm.objective=raft", "algorithm.refinements_per_prompt=0"]
    metrics, samples = _run(tmp_path, "raft", *raft, "algorithm.samples_per_prompt=4")
    trained = [s for s in samples if s["trained"]]
    assert all(s["verdict"] == "correct" for s in trained)  # only correct responses
    assert metrics["fine_tune/rows"] == len(trained)
    assert not any(k.startswith("advantage/") for k in metrics)
