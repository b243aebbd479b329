"""Resume helpers: recipe differences, log truncation, checkpoint completeness/pruning."""

import json

from cgrpo.train.checkpoint import complete_checkpoints, is_complete, prune_checkpoints
from cgrpo.train.resume import cut_logs, recipe_changes


def test_recipe_changes_ignore_volatile_keys():
    old = {"optim": {"lr": 1e-4}, "run": {"console": "rich", "name": "a"}, "resume": None}
    new = {
        "optim": {"lr": 2e-4},
        "run": {"console": "plain", "name": "a"},
        "resume": "auto",
        "eval": {"every": 5},
    }
    assert recipe_changes(old, new) == ["eval.every: '<absent>' -> 5", "optim.lr: 0.0001 -> 0.0002"]


def test_cut_logs_drops_later_steps(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 4))
    )
    (tmp_path / "samples.jsonl").write_text(
        "".join(json.dumps({"step": s, "kind": "initial"}) + "\n" for s in (1, 1, 2, 3))
    )
    cut_logs(tmp_path, 2)
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 3


def fake_ckpt(run, step, complete=True):
    path = run / "checkpoints" / f"step-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_text("x")
    if complete:
        (path / "manifest.json").write_text(
            json.dumps({"step": step, "files": ["model.safetensors"]})
        )
    return path


def test_completeness_and_pruning(tmp_path):
    for step in (1, 2, 3, 4):
        fake_ckpt(tmp_path, step)
    partial = fake_ckpt(tmp_path, 5, complete=False)
    assert not is_complete(partial)
    (tmp_path / "checkpoints" / "step-4" / "model.safetensors").unlink()
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [1, 2, 3]
    prune_checkpoints(tmp_path, keep_last=1, keep={1})
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [1, 3]
