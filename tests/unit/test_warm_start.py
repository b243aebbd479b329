"""RL started from a warm-up of another run: a warning when that warm-up taught another
refinement template, and a warm-up-only run's last words (its files, the RL command)."""

import json
import logging
from types import SimpleNamespace

from cgrpo.app.warmup import warm_up_done, warn_of_another_template
from cgrpo.config import load_recipe
from tests.helpers import REPO

QUICKSTART = REPO / "recipes" / "quickstart-cpu.yaml"


def warm_run(root, template, share=0.3):
    run = root / "warm"
    (run / "checkpoints" / "step-0").mkdir(parents=True)
    (run / "checkpoints" / "step-0" / "config.json").write_text("{}")  # a model directory
    (run / "recipe.yaml").write_text(
        f"sft:\n  steps: 5\n  refinement_share: {share}\n"
        f"refinement:\n  template: {json.dumps(template)}\n"  # JSON: a YAML string
    )
    return run / "checkpoints" / "step-0"


def rl_recipe(model_path, *extra):
    overrides = [f"model.path={model_path}", "model.create=null", "sft.steps=0", *extra]
    recipe, _ = load_recipe(QUICKSTART, overrides)
    return recipe


def test_a_warm_up_with_another_refinement_template_is_warned_of(tmp_path, caplog):
    taught = "{question} | was: {response} | critique: {critique}"
    recipe = rl_recipe(warm_run(tmp_path, taught))
    with caplog.at_level(logging.WARNING, logger="cgrpo"):
        warn_of_another_template(recipe, tmp_path / "rl")
    (record,) = caplog.records
    assert f"model.path is the warm-up of {tmp_path / 'warm'}" in record.getMessage()
    assert repr(taught) in record.getMessage() and "refine/success_rate" in record.getMessage()


def test_no_warning_for_the_same_template_no_refinement_examples_or_no_refinements(
    tmp_path, caplog
):
    same = load_recipe(QUICKSTART)[0].refinement.template  # the quickstart's
    with caplog.at_level(logging.WARNING, logger="cgrpo"):
        warn_of_another_template(rl_recipe(warm_run(tmp_path / "a", same)), tmp_path / "rl")
        other = warm_run(tmp_path / "b", "{question}{response}{critique}", share=0.0)
        warn_of_another_template(rl_recipe(other), tmp_path / "rl")  # taught no refinements
        taught = warm_run(tmp_path / "c", "{question}{response}{critique}")
        grpo = rl_recipe(
            taught, "algorithm.refinements_per_prompt=0", "algorithm.samples_per_prompt=8"
        )
        warn_of_another_template(grpo, tmp_path / "rl")  # GRPO refines nothing
    assert caplog.records == []


def test_a_warm_up_only_run_ends_pointing_at_its_files_and_the_rl_command(tmp_path):
    recipe, _ = load_recipe(
        REPO / "recipes" / "persistent-failures-cpu.yaml", ["run.name=warm", "train.steps=0"]
    )
    run = SimpleNamespace(recipe=recipe, run_dir=tmp_path / "warm", path="pf.yaml",
                          overrides=["run.name=warm", "run.seed=3", "train.steps=0"])  # fmt: skip
    said = warm_up_done(run)
    assert said.startswith(
        f"cgrpo: warm-up done; its loss per step in {tmp_path / 'warm' / 'sft_metrics.jsonl'}, "
        f"its weights in {tmp_path / 'warm' / 'checkpoints' / 'step-0'}. RL from them: "
    )
    # the recipe's sft.optim would be rejected by a run without a warm-up: set to null
    assert said.endswith(
        f"cgrpo run pf.yaml run.seed=3 model.path={tmp_path / 'warm' / 'checkpoints' / 'step-0'}"
        " sft.steps=0 run.name=warm-rl sft.optim=null"
    )
