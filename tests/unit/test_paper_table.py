"""benchmarks/paper_table.py without running anything: the tables file and its errors, how a
row starts from its seed's warm-up, and the table it prints from the runs' metrics.jsonl
(hand-written here). tests/integration/test_paper_table_run.py runs the ladder."""

import importlib.util
import json
import sys
from pathlib import Path

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
    table = paper_table.load_tables()["ladder"]
    paper_table.shared_warmup(table, [])  # the rows' model, prompt and sft sections agree
    (tmp_path / "warm").mkdir()
    (tmp_path / "warm" / "config.json").write_text("{}")  # a model is there (not read)
    for row in table.rows:
        over = paper_table.start_from(tmp_path / "warm", row.recipe, [])
        assert over[:2] == [f"model.path={tmp_path / 'warm'}", "sft.steps=0"]
        recipe, _ = load_recipe(row.recipe, over)  # valid: no warm-up setting left
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
    table = paper_table.load_tables()["ladder"]
    finals = {0: [0.0, 0.25, 0.5], 4: [0.5, 0.75, 0.25]}  # row index -> seeds 0, 1, 2
    for index, row in enumerate(table.rows):
        for seed in range(3):
            final = finals.get(index, [0.0] * 3)[seed]
            _write_run(tmp_path / f"ladder-{Path(row.recipe).stem}-s{seed}", 0.0, final)
    text, data = paper_table.render("ladder", table, [0, 1, 2], tmp_path)
    lines = text.splitlines()
    first = next(line for line in lines if line.startswith("| 1. R1-GRPO"))
    assert first == "| 1. R1-GRPO (with KL) | 0.25 (0.00-0.50) | 0.00 | 0.25 | 0.50 |  |"
    last = next(line for line in lines if line.startswith("| 5."))
    assert "| 0.50 (0.25-0.75) | 0.50 | 0.75 | 0.25 | 47.08 |" in last
    assert any(
        line.startswith("| warm model (step 0), all rows | 0.00 (0.00-0.00)") for line in lines
    )
    assert data["rows"][4]["values"] == [0.5, 0.75, 0.25]


def test_the_ladder_table_is_the_five_recipes_in_order(paper_table):
    table = paper_table.load_tables()["ladder"]
    assert [Path(r.recipe) for r in table.rows] == sorted(
        (REPO / "recipes" / "paper").glob("ablation-*-cpu.yaml")
    )
    assert [m.key for m in table.metrics] == ["eval/accuracy"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("t: {title: x, metrics: [], rows: []}", "t.metrics: Tuple should have at least 1 item"),
        (
            "t: {title: x, metrics: [{title: a, key: eval/accuracy}], rows: [{label: r}]}",
            "t.rows.0.recipe: Field required",
        ),
        (
            "t: {title: x, metrics: [{title: a, key: k}], rows: [{label: r, recipe: no.yaml}]}",
            "t.rows.0.recipe: no file",
        ),
        ("t: {title: x, metric: []}", "t.metric: Extra inputs are not permitted"),
        ("[1, 2]", "expected a mapping of table names to tables"),
    ],
)
def test_a_bad_tables_file_names_the_file_and_the_field(paper_table, tmp_path, text, message):
    path = tmp_path / "tables.yaml"
    path.write_text(text)
    with pytest.raises(paper_table.TableFileError, match=message) as error:
        paper_table.load_tables(path)
    assert str(path) in str(error.value)


def test_a_bad_table_or_recipe_exits_2_with_a_message(paper_table, tmp_path, capsys):
    assert paper_table.main(["nonesuch", "--out", str(tmp_path)]) == 2
    assert "no table 'nonesuch' (it has: ladder" in capsys.readouterr().err
    assert paper_table.main(["ladder", "--out", str(tmp_path), "--set", "train.steps=-1"]) == 2
    assert "train.steps" in capsys.readouterr().err
    # rows that could not share a warm-up
    two = tmp_path / "tables.yaml"
    two.write_text(
        "t:\n  title: x\n  metrics: [{title: a, key: eval/accuracy}]\n  rows:\n"
        f"    - {{label: a, recipe: {REPO / 'recipes/paper/ablation-2-no-kl-cpu.yaml'}}}\n"
        f"    - {{label: b, recipe: {REPO / 'recipes/quickstart-cpu.yaml'}}}\n"
    )
    assert paper_table.main(["t", "--tables", str(two), "--out", str(tmp_path)]) == 2
    assert "must share a warm-up" in capsys.readouterr().err


def test_the_baselines_table_starts_sequential_from_its_r1_grpo_row(paper_table):
    table = paper_table.load_tables()["baselines"]
    paper_table.shared_warmup(table, [])
    assert table.layout == "columns"
    by_stem = {Path(r.recipe).stem: r for r in table.rows}
    assert set(by_stem) == {
        p.stem for p in (REPO / "recipes" / "paper").glob("baseline-*-cpu.yaml")
    } - {"baseline-root-cpu"}
    assert by_stem["baseline-sequential-cpu"].after == by_stem["baseline-r1-grpo-cpu"].recipe
    assert [r.after for r in table.rows].count("") == len(table.rows) - 1


def test_the_columns_layout_has_one_line_per_method_and_the_median_per_benchmark(
    paper_table, tmp_path
):
    path = tmp_path / "tables.yaml"
    recipe = REPO / "recipes/paper/baseline-raft-cpu.yaml"
    path.write_text(
        "t:\n  title: T\n  layout: columns\n"
        "  metrics: [{title: hard, key: eval/h}, {title: easy, key: eval/e}]\n"
        f"  rows: [{{label: RAFT, recipe: {recipe}}}]\n"
    )
    table = paper_table.load_tables(path)["t"]
    for seed, (h, e) in enumerate([(0.5, 1.0), (0.25, 0.75), (0.0, 0.5)]):
        run = tmp_path / f"t-baseline-raft-cpu-s{seed}"
        run.mkdir()
        lines = [{"step": 0, "eval/h": 0.0, "eval/e": 0.0}, {"step": 9, "eval/h": h, "eval/e": e}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    text, data, csv = paper_table.render_columns("t", table, [0, 1, 2], tmp_path)
    # medians over seeds: hard median(0.5, 0.25, 0.0) = 0.25, easy median(1, 0.75, 0.5) = 0.75
    assert text.splitlines()[2:] == ["| method | hard | easy |", "|---|---|---|",
                                     "| RAFT | 0.250 | 0.750 |"]  # fmt: skip
    assert csv.splitlines() == [
        "method,seed,hard,easy", '"RAFT",0,0.5000,1.0000', '"RAFT",1,0.2500,0.7500',
        '"RAFT",2,0.0000,0.5000', '"RAFT",median,0.2500,0.7500',
    ]  # fmt: skip
    assert data["rows"] == [{"row": "RAFT", "hard": [0.5, 0.25, 0.0], "easy": [1.0, 0.75, 0.5]}]


def test_an_after_that_is_no_earlier_row_is_an_error(paper_table, tmp_path):
    path = tmp_path / "tables.yaml"
    a, b = (REPO / f"recipes/paper/baseline-{n}-cpu.yaml" for n in ("sequential", "r1-grpo"))
    path.write_text(
        "t:\n  title: x\n  metrics: [{title: a, key: k}]\n"
        f"  rows: [{{label: s, recipe: {a}, after: {b}}}, {{label: g, recipe: {b}}}]\n"
    )
    with pytest.raises(paper_table.TableFileError, match=r"t\.rows\.0\.after: .* earlier row"):
        paper_table.load_tables(path)


def test_csv_needs_the_columns_layout(paper_table, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        paper_table.main(["ladder", "--out", str(tmp_path), "--csv", str(tmp_path / "x.csv")])
    assert stop.value.code == 2
    assert "--csv writes the columns layout" in capsys.readouterr().err
