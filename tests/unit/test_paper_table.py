"""benchmarks/paper_table.py without running anything: how a row starts from its seed's
warm-up, and the table it prints from the runs' metrics.jsonl (hand-written here)."""

import importlib.util
import json
import sys

import pytest

from cgrpo.config import load_recipe
from tests.helpers import REPO


@pytest.fixture(scope="module")
def paper_table():
    spec = importlib.util.spec_from_file_location(
        "paper_table", REPO / "benchmarks" / "paper_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_every_ladder_row_starts_from_the_seeds_warm_up(paper_table, tmp_path):
    table = paper_table.TABLES["ladder"]
    paper_table.shared_warmup(table, [])  # the rows' model, prompt and sft sections agree
    (tmp_path / "warm").mkdir()
    (tmp_path / "warm" / "config.json").write_text("{}")  # a model is there (not read)
    for row in table.rows:
        over = paper_table.start_from(tmp_path / "warm", row.recipe, [])
        assert over[:2] == [f"model.path={tmp_path / 'warm'}", "sft.steps=0"]
        recipe, _ = load_recipe(REPO / row.recipe, over)  # valid: no warm-up setting left
        assert recipe.sft.steps == 0 and recipe.model.path == str(tmp_path / "warm")


def _write_run(run_dir, before, after):
    run_dir.mkdir(parents=True)
    lines = [
        {"step": 0, "eval/accuracy": before},
        {"step": 40, "reward/initial_mean": 0.1},
        {"step": 80, "eval/accuracy": after},
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_the_table_has_each_rows_median_and_spread_over_seeds(paper_table, tmp_path):
    table = paper_table.TABLES["ladder"]
    finals = {0: [0.0, 0.25, 0.5], 4: [0.5, 0.75, 0.25]}  # row index -> seeds 0, 1, 2
    for index, row in enumerate(table.rows):
        for seed in range(3):
            final = finals.get(index, [0.0] * 3)[seed]
            _write_run(tmp_path / f"ladder-{row.recipe.split('/')[-1][:-5]}-s{seed}", 0.0, final)
    text, data = paper_table.render("ladder", [0, 1, 2], tmp_path)
    lines = text.splitlines()
    first = next(line for line in lines if line.startswith("| 1. R1-GRPO"))
    assert first == "| 1. R1-GRPO (with KL) | 0.25 (0.00-0.50) | 0.00 | 0.25 | 0.50 |  |"
    last = next(line for line in lines if line.startswith("| 5."))
    assert "| 0.50 (0.25-0.75) | 0.50 | 0.75 | 0.25 | 47.08 |" in last
    assert any(
        line.startswith("| warm model (step 0), all rows | 0.00 (0.00-0.00)") for line in lines
    )
    assert data["rows"][4]["values"] == [0.5, 0.75, 0.25]
