"""A reward function that raises on every call: the run must not train to the end on
reward 0 and exit 0. Errors are counted per step (``verify/errors``), the first traceback
is shown once with its file:line, and a step where every verification raised stops the run
(exit 2) unless ``train.verifier_errors: tolerate``. In one process, through the CLI's
entry point."""

import json

import pytest

from cgrpo.cli.main import main
from tests.helpers import REPO

pytestmark = pytest.mark.slow

FAILING = "def score(response, problem):\n    return {}['missing']\n"  # KeyError, line 2


def test_a_reward_function_that_always_raises_stops_the_run_or_is_counted(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rewards.py").write_text(FAILING)
    args = ["run", str(REPO / "recipes" / "quickstart-cpu.yaml"), "sft.steps=1",
            "train.steps=2", "data.task.options.size=80", "algorithm.prompts_per_step=2",
            "algorithm.micro_batch_size=16", "run.console=plain", "model.path=tiny",
            "verifier={name: python, options: {path: rewards.py}}"]  # fmt: skip
    assert main([*args, "run.name=stop"]) == 2
    said = capsys.readouterr()
    text = said.out + said.err
    assert "every verification of step 1 raised" in text
    assert "train.verifier_errors: tolerate" in text
    assert "KeyError: 'missing'" in text and f"{tmp_path / 'rewards.py'}:2" in text
    assert text.count("Traceback (most recent call last)") == 1
    assert not (tmp_path / "runs" / "stop" / "checkpoints").exists()  # nothing trained

    assert main([*args, "run.name=tolerated", "train.verifier_errors=tolerate"]) == 0
    said = capsys.readouterr()
    text = said.out + said.err
    assert text.count("Traceback (most recent call last)") == 1  # once, not every step
    lines = (tmp_path / "runs" / "tolerated" / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines]
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:  # 2 prompts x 7 samples and their refinements, every one raised
        assert m["verify/errors"] >= 14 and m["reward/initial_mean"] == 0.0
