"""Observer plugins through the real CLI: the recipe's ``observers:`` list, a plugin package
found by its entry point (a minimal installed distribution, real discovery), the run's
scalars read back from TensorBoard's event files with TensorBoard's own reader."""

import json

import numpy as np
import pytest

from tests.helpers import REPO, fake_distribution, run_cli

pytest.importorskip("tensorboard")
pytestmark = pytest.mark.slow

TB_SRC = REPO / "plugins" / "cgrpo-tensorboard" / "src"
QUICKSTART = str(REPO / "recipes" / "quickstart-cpu.yaml")


def short(tmp_path, *extra):
    return [
        "run",
        QUICKSTART,
        "sft.steps=2",
        "train.steps=3",
        "train.save_every=1",
        "data.task.options.size=30",
        "algorithm.prompts_per_step=2",
        "algorithm.micro_batch_size=16",
        "run.console=plain",
        f"model.path={tmp_path / 'tiny'}",
        f"run.output_dir={tmp_path / 'runs'}",
        *extra,
    ]


def scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc, {
        tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]
    }


def test_tensorboard_observer_round_trips_the_scalars(tmp_path):
    site = fake_distribution(
        tmp_path / "site", "cgrpo-tensorboard", {"tensorboard": "cgrpo_tensorboard"}
    )
    observers = "observers=[{name: tensorboard, options: {samples_every: 2, samples: 2}}]"
    out = run_cli(*short(tmp_path, observers), paths=[site, TB_SRC], cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    run = tmp_path / "runs" / "quickstart"
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    acc, logged = scalars(run / "tensorboard")
    for key in ("reward/initial_mean", "loss/total", "update/grad_norm", "time/step"):
        # TensorBoard stores float32: the values are metrics.jsonl's, rounded to float32
        expected = [(m["step"], float(np.float32(m[key]))) for m in metrics]
        assert logged[key] == expected, key
    texts = acc.Tags()["tensors"]
    assert "recipe/text_summary" in texts and "samples/text_summary" in texts

    # resumed from step 2: step 3 is logged again, once
    (run / "checkpoints" / "step-3").rename(tmp_path / "moved")
    again = run_cli(*short(tmp_path, observers, "resume=auto"), paths=[site, TB_SRC], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    _, logged = scalars(run / "tensorboard")
    assert [s for s, _ in logged["loss/total"]] == [1, 2, 3]


def test_an_unknown_observer_or_option_is_a_recipe_error(tmp_path):
    site = fake_distribution(
        tmp_path / "site", "cgrpo-tensorboard", {"tensorboard": "cgrpo_tensorboard"}
    )
    bad = run_cli(
        "check",
        QUICKSTART,
        "observers=[{name: tensorbord}, {name: tensorboard, options: {every: 3}}]",
        paths=[site, TB_SRC],
    )
    assert bad.returncode == 2
    assert "observers[0].name" in bad.stderr and "tensorboard" in bad.stderr
    assert "observers[1].options.every" in bad.stderr


WANDB_SRC = REPO / "plugins" / "cgrpo-wandb" / "src"


def test_wandb_observer_round_trips_config_scalars_and_samples_offline(tmp_path):
    """W&B in offline mode (no network): the run file it writes is read back with
    tests/wandb_reader.py (wandb's own protobuf classes)."""
    pytest.importorskip("wandb")
    from tests.wandb_reader import config, history

    site = fake_distribution(tmp_path / "site", "cgrpo-wandb", {"wandb": "cgrpo_wandb"})
    observers = (
        "observers=[{name: wandb, options: {mode: offline, project: t, samples_every: 2, "
        "samples: 3}}]"
    )
    env = {"WANDB_SILENT": "true", "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")}
    out = run_cli(*short(tmp_path, observers), paths=[site, WANDB_SRC], cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    run = tmp_path / "runs" / "quickstart"
    run_id = (run / "wandb-run-id").read_text().strip()
    (first,) = run.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    logged = history(first)
    assert [h["_step"] for h in logged] == [1, 2, 3]
    for h, m in zip(logged, metrics, strict=True):
        for key, value in m.items():
            if key != "step" and isinstance(value, float) and value == value:  # not NaN
                assert h[key] == value, key  # exactly: W&B keeps float64
    assert logged[1]["samples/_type"] == "table-file" and logged[1]["samples/nrows"] == 3
    assert "samples/_type" not in logged[0]
    cfg = config(first)
    assert cfg["run"]["name"] == "quickstart" and cfg["algorithm"]["samples_per_prompt"] == 7

    # resumed: the same W&B run id, the steps after the checkpoint logged again
    (run / "checkpoints" / "step-3").rename(tmp_path / "moved")
    again = run_cli(
        *short(tmp_path, observers, "resume=auto"), paths=[site, WANDB_SRC], cwd=tmp_path, env=env
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run / "wandb-run-id").read_text().strip() == run_id
    files = sorted(run.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 2
    assert [h["_step"] for h in history(files[-1])] == [3]


def test_tracker_samples_size_without_samples_is_refused():
    """Each plugin's Options say what they would ignore, like the built-ins'."""
    import sys

    from cgrpo.config.validate import ignored_setting_issues

    sys.path[:0] = [str(TB_SRC), str(WANDB_SRC)]
    from cgrpo_tensorboard import TensorBoardObserver
    from cgrpo_wandb import WandbObserver

    for observer in (TensorBoardObserver, WandbObserver):
        options = observer.Options(samples_every=0, samples=2)
        assert [i.path for i in ignored_setting_issues(options, "o")] == ["o.samples"]
        assert ignored_setting_issues(observer.Options(samples=2), "o") == []
