"""Benchmarks: every preset reads its fixture (a few synthetic rows in the public
dataset's format, tests/fixtures/benchmarks) and scores a known response set exactly."""

from __future__ import annotations

import json

import pytest

from cgrpo.errors import DataError
from cgrpo.interfaces import Benchmark, BuildContext
from cgrpo.plugins import get_registries
from tests.helpers import REPO

FIXTURES = REPO / "tests" / "fixtures" / "benchmarks"
NINE = ["math-500", "minerva-math", "olympiadbench", "amc23", "aime24", "aime25",
        "gpqa-diamond", "mmlu-pro", "theoremqa"]  # fmt: skip

# per preset: the reference answers its fixture must yield, in order
EXPECTED = {
    "math-500": ["7", "\\frac{1}{2}", "3"],
    "minerva-math": ["20", "1024"],
    "olympiadbench": ["5", "2, 3"],  # the maths subset only; a list answer joined
    "amc23": ["42", "99"],  # 42.0 in the file
    "aime24": ["144", "512"],
    "aime25": ["33", "49"],
    "gpqa-diamond": None,  # letters depend on the seeded shuffle: checked below
    "mmlu-pro": ["C", "B"],
    "theoremqa": ["True", "6", "0.25"],
}


def build(name: str, **options):
    return get_registries()["benchmark"].build(name, options, BuildContext())


@pytest.mark.parametrize("name", NINE)
def test_every_preset_reads_its_fixture_and_scores_known_responses_exactly(name):
    bench = build(name, path=str(FIXTURES / name))
    assert isinstance(bench, Benchmark)
    problems = bench.load()
    if EXPECTED[name] is not None:
        assert [p.answer for p in problems] == EXPECTED[name]
    verifier_name, options = bench.verifier
    verifier = get_registries()["verifier"].build(verifier_name, options, BuildContext())
    for p in problems:
        right = f"So the answer is \\boxed{{{p.answer}}}."
        assert verifier.verify(right, p).correct, (name, p.answer)
        wrong = "So the answer is \\boxed{D}." if p.answer != "D" else "\\boxed{A}"
        if verifier_name == "math":
            wrong = "So the answer is \\boxed{12345}." if p.answer != "12345" else "\\boxed{1}"
        assert not verifier.verify(wrong, p).correct, (name, p.answer)
    described = bench.describe()
    assert len(described["sha256"]) == 64 and len(described["template_version"]) == 12


def test_multiple_choice_presets_list_lettered_options_and_keep_the_answer_with_its_text():
    gpqa = build("gpqa-diamond", path=str(FIXTURES / "gpqa-diamond")).load()
    for p, correct in zip(gpqa, ["Carbon dioxide", "-1"], strict=True):
        line = next(x for x in p.question.splitlines() if x.startswith(f"{p.answer}) "))
        assert line == f"{p.answer}) {correct}"
        assert sum(x[:2] in ("A)", "B)", "C)", "D)") for x in p.question.splitlines()) == 4
    assert [p.id for p in gpqa] == ["rec01", "rec02"]
    again = build("gpqa-diamond", path=str(FIXTURES / "gpqa-diamond")).load()
    assert [p.question for p in again] == [p.question for p in gpqa]  # seeded: stable
    other = build("gpqa-diamond", path=str(FIXTURES / "gpqa-diamond"), shuffle_seed=7).load()
    assert [p.answer for p in other] != [p.answer for p in gpqa] or [p.question for p in other] != [
        p.question for p in gpqa
    ]
    mmlu = build("mmlu-pro", path=str(FIXTURES / "mmlu-pro")).load()
    assert "C) 7" in mmlu[0].question and "J) 16" in mmlu[0].question
    assert mmlu[0].question.endswith("Answer with the letter of the correct option.")


def test_preset_defaults_follow_the_usual_reporting():
    for name in ("aime24", "aime25", "amc23"):
        b = build(name, path=str(FIXTURES / name))
        assert (b.k, b.temperature, b.top_p, b.category) == (16, 0.6, 0.95, "math")
    for name in ("gpqa-diamond", "mmlu-pro", "theoremqa"):
        assert build(name, path=str(FIXTURES / name)).category == "general"
    assert build("math-500", path=str(FIXTURES / "math-500")).k == 1
    assert build("math-500", path=str(FIXTURES / "math-500"), k=4).k == 4
    with pytest.raises(Exception, match="greater than or equal to 1"):
        build("aime24", k=0)  # the preset keeps the option's constraints


def test_a_directory_names_its_split_and_subset_or_the_error_lists_its_files(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"question": "q", "answer": "1"}\n')
    (tmp_path / "validation.jsonl").write_text('{"question": "q", "answer": "1"}\n')
    with pytest.raises(DataError, match=r"split 'test'.*train.jsonl.*set path to the file"):
        build("rows", path=str(tmp_path)).load()
    assert len(build("rows", path=str(tmp_path), split="train").load()) == 1


def test_a_missing_field_names_the_file_line_and_the_option_to_map_it(tmp_path):
    data = tmp_path / "test.jsonl"
    data.write_text(json.dumps({"problem": "x", "answer": "1"}) + "\n")
    with pytest.raises(DataError, match=r"test.jsonl:1: .*'question'.*options.question_field"):
        build("rows", path=str(data)).load()


def test_without_a_local_copy_or_the_hub_the_error_says_to_set_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"aime24: HuggingFaceH4/aime_2024.*benchmark's path="):
        build("aime24").load()


def test_options_that_cannot_work_are_refused():
    registry = get_registries()["benchmark"]
    options = registry.get("rows").options
    with pytest.raises(Exception, match="must show \\{choices\\}"):
        options.model_validate({"choices_field": "options"})
    with pytest.raises(Exception, match="names a macro average"):
        options.model_validate({"label": "avg"})
    with pytest.raises(Exception, match="unknown verifier 'maths'"):
        options.model_validate({"verifier": "maths"})
    assert "temperature" in options.model_validate({"k": 1}).ignored_settings()


def test_arithmetic_test_is_drawn_with_its_own_seed():
    bench = build("arithmetic-test", size=20, digits=2)
    problems = bench.load()
    assert len(problems) == 20 and bench.describe()["seed"] == 4321
    from cgrpo.builtins.tasks.arithmetic import ArithmeticTask

    train = ArithmeticTask(ArithmeticTask.Options(size=20, digits=2)).load()
    assert [p.question for p in problems] != [p.question for p in train]


def test_cgrpo_check_reads_each_benchmark_and_names_the_one_it_cannot():
    from tests.helpers import run_cli

    math500 = f"{{name: math-500, options: {{path: {FIXTURES / 'math-500'}}}}}"
    benchmarks = f"eval.benchmarks=[{math500}, {{name: aime24, options: {{path: /no/such/aime}}}}]"
    out = run_cli("check", str(REPO / "recipes" / "quickstart-cpu.yaml"), "eval.every=5",
                  benchmarks, "--data-rows", "10", env={"COLUMNS": "200"})  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "eval.benchmarks[0] (math-500): 3 usable rows read" in out.stdout
    assert "benchmark aime24: /no/such/aime: no such file or directory" in out.stdout


def test_a_save_to_disk_directory_and_metadata_files_beside_the_data(tmp_path):
    """datasets' save_to_disk output is read with load_from_disk (its split chosen); a hub
    snapshot's dataset_infos.json is never taken for data."""
    import datasets

    rows = {"problem": ["Find 2+2.", "Find 3+3."], "answer": ["4", "6"]}
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows)}).save_to_disk(tmp_path / "dd")
    problems = build("aime24", path=str(tmp_path / "dd"), split="test").load()
    assert [p.answer for p in problems] == ["4", "6"]
    with pytest.raises(DataError, match=r"has splits \['test'\], not 'train'"):
        build("aime24", path=str(tmp_path / "dd")).load()  # the preset's split is train
    snapshot = tmp_path / "snap"
    (snapshot / "data").mkdir(parents=True)
    (snapshot / "dataset_infos.json").write_text("{}")
    (snapshot / "data" / "rows.jsonl").write_text('{"problem": "Find 1+1.", "answer": "2"}\n')
    assert [p.answer for p in build("aime24", path=str(snapshot)).load()] == ["2"]


def test_the_benchmarks_flag_replaces_the_recipes_eval_problems_and_cut():
    from cgrpo.cli.evaluate import benchmark_overrides

    assert benchmark_overrides("aime24, math-500=/d/m.jsonl") == [
        'eval.benchmarks=[{"name": "aime24"}, {"name": "math-500", "options": {"path": '
        '"/d/m.jsonl"}}]',
        "eval.task=null",
        "eval.size=null",
    ]
