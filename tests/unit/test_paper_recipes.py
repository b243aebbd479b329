"""recipes/paper: every recipe passes ``cgrpo check`` (run in this process, one call each),
and the ablation ladder's rows differ from the row before in the one step the paper names.

The Qwen2.5-7B rows get the overrides recipes/paper/README.md documents (a model directory,
a training parquet in verl's format, no benchmarks) and the model's published shape, so
the memory plan is checked on 8 x 80 GiB; the CPU variants are checked as they are."""

import itertools
import json

import pytest

from cgrpo.cli.main import EXIT_OK, cmd_check
from cgrpo.config import load_recipe
from tests.helpers import REPO
from tests.verl_files import training_rows, write_parquet

PAPER = REPO / "recipes" / "paper"
# Qwen2.5-7B's config.json (the published shape; the weights are not needed to plan)
QWEN25_7B = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "max_position_embeddings": 131072,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
LADDER = ["1-r1-grpo-kl", "2-no-kl", "3-random-refinement", "4-quality-selection", "5-shaping"]


@pytest.fixture(scope="module")
def gpu_overrides(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    (root / "Qwen2.5-7B").mkdir()
    (root / "Qwen2.5-7B" / "config.json").write_text(json.dumps(QWEN25_7B))
    train = write_parquet(root / "train.parquet", training_rows(4))  # the authors' format
    return [
        f"model.path={root / 'Qwen2.5-7B'}",
        f"data.task.options.path={train}",
        "eval.every=0",
        "eval.benchmarks=[]",
    ]


def test_every_paper_recipe_passes_cgrpo_check(gpu_overrides, capsys):
    recipes = sorted(p for p in PAPER.glob("*.yaml") if p.name != "tables.yaml")
    assert len(recipes) >= 10  # the ladder's 5 rows and their CPU variants
    failed = {}
    for recipe in recipes:
        if recipe.stem.endswith("-cpu"):
            code = cmd_check(str(recipe), [], None, None)
        else:
            code = cmd_check(str(recipe), gpu_overrides, 8, "80GiB")
        out = capsys.readouterr()
        if code != EXIT_OK:
            failed[recipe.name] = out.out[-2000:] + out.err
        elif not recipe.stem.endswith("-cpu"):
            assert "of 80.0 GiB: fits" in out.out, recipe.name
    assert not failed, failed


def _flat(data, prefix=""):
    out = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        out.update(_flat(value, path) if isinstance(value, dict) else {path: value})
    return out


def _changes(suffix, overrides):
    """Per step of the ladder, the settings that differ from the row before (new values)."""
    rows = [
        _flat(load_recipe(PAPER / f"ablation-{name}{suffix}.yaml", overrides)[1]) for name in LADDER
    ]
    steps = []
    for before, after in itertools.pairwise(rows):
        keys = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
        steps.append({k.removeprefix("algorithm."): after.get(k) for k in keys - {"run.name"}})
    return steps


@pytest.mark.parametrize("suffix", ["", "-cpu"])
def test_each_ladder_row_adds_one_step(suffix, gpu_overrides):
    steps = _changes(suffix, gpu_overrides if not suffix else [])
    # what a step switches off disappears from the resolved recipe (None here): the KL's
    # aggregation, the fallback under random selection, gamma without its shaping mode
    assert {k for k, v in steps[0].items() if v is not None} == {"loss.kl_coef"}
    assert steps[0]["loss.kl_coef"] == 0.0  # 2: remove the KL term
    assert {k: v for k, v in steps[1].items() if v is not None} == {  # 3: a random refinement
        "samples_per_prompt": 7,
        "refinements_per_prompt": 1,
        "selection": "random",
        "loss.shaping.mode": "p",  # no shaping yet: the released code's no_reshape
    }
    assert steps[2] == {"selection": "correct_first", "fallback": "first"}  # 4: by quality
    assert steps[3] == {"loss.shaping.mode": "p_over_p_plus_gamma", "loss.shaping.gamma": 0.1}
