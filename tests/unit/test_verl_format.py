"""verl/LUFFY rows, as the Critique-GRPO authors published their data: field paths into
nested records, message lists where text is expected, ``format: verl``, ``data_source``
as a source label, and the validation file's repeated rows read as samples (avg@k).
Files are generated with pyarrow in the authors' schema (tests/verl_files.py)."""

from __future__ import annotations

import json

import pytest

from cgrpo.builtins.tasks.fields import MISSING, field_value, fields_present, text_of
from cgrpo.builtins.tasks.files import HFDatasetTask, JSONLTask, ParquetTask
from cgrpo.builtins.verifiers.math import MathVerifier
from cgrpo.errors import DataError
from cgrpo.interfaces import BuildContext
from cgrpo.plugins import get_registries
from cgrpo.train.evaluation import EvalSet, evaluate_sets, source_sets
from tests.unit.test_evaluation import Prompts, ScriptedPolicy
from tests.verl_files import FIVE_SOURCES, training_rows, validation_rows, write_parquet


def test_a_field_is_a_path_into_nested_records_or_a_list_index():
    row = {"a.b": 1, "rm": {"ground_truth": "7", "style": "rule", "q": None}, "t": [{"c": "x"}]}
    assert field_value(row, "rm.ground_truth") == "7"
    assert field_value(row, "a.b") == 1  # a column whose own name has the dot comes first
    assert field_value(row, "t.0.c") == "x"
    for gone in ("rm.q", "rm.answer", "t.1.c", "nope", "rm.style.x"):
        assert field_value(row, gone) is MISSING, gone
    assert fields_present(row, "rm.answer") == "rm has: ground_truth, style, q"
    assert fields_present(row, "rm.q") == "it is null"
    assert fields_present(row, "extra.index") == "fields present: a.b, rm, t"


def test_a_message_list_is_its_assistant_content_where_text_is_expected():
    target = [{"role": "assistant", "content": "2 + 2 = 4. \\boxed{4}"}]
    assert text_of(target, "target", "f:1") == "2 + 2 = 4. \\boxed{4}"
    turns = (("user", "q"), ("assistant", "a1"), ("user", "more"), ("assistant", "a2"))
    chat = [{"role": r, "content": c} for r, c in turns]
    assert text_of(chat, "target", "f:1") == "a2"  # the last assistant turn
    assert text_of(["7", "8"], "answer", "f:1") == "['7', '8']"  # other lists: as before
    with pytest.raises(DataError, match=r"f:1: field 'target' is a list of chat messages"):
        text_of([{"role": "user", "content": "q"}], "target", "f:1")


def test_the_verl_preset_alone_reads_a_training_parquet(tmp_path):
    path = write_parquet(tmp_path / "train.parquet", training_rows(4))
    problems = ParquetTask(ParquetTask.Options(path=str(path), format="verl")).load()
    first = problems[0]
    assert first.id == "openr1_easy/0"  # <source>/<extra_info.index>; '/' in a label -> '_'
    assert first.question == "What is 7 + 1?"  # the last user message
    assert first.metadata["messages"][0] == {"role": "system", "content": "You are a helpful "
                                             "assistant."}  # fmt: skip
    assert (first.answer, first.metadata["task"]) == ("8", "openr1_easy")
    assert first.solution == "7 + 1 = 8. The answer is \\boxed{8}."  # target's content
    assert [p.metadata["task"] for p in problems] == ["openr1_easy", "openr1_hard"] * 2


def test_field_options_given_beside_the_preset_win(tmp_path):
    rows = training_rows(2)
    rows[0]["reward_model"]["question"] = "7 plus 1?"  # the authors' train_add_question
    path = write_parquet(tmp_path / "train.parquet", rows)
    options = ParquetTask.Options(
        path=str(path), format="verl", source_field="ability", solution_field=None
    )
    problems = ParquetTask(options).load()
    assert options.answer_field == "reward_model.ground_truth"  # the preset's
    assert [p.metadata["task"] for p in problems] == ["math", "math"]  # given: ability
    assert all(p.solution is None for p in problems)  # given: no solution field
    # reward_model.question, where a row has it, is the question's text; the prompt is
    # still rendered from the messages
    assert [p.question for p in problems] == ["7 plus 1?", "What is 1 + 9?"]
    assert problems[0].metadata["messages"][1]["content"] == "What is 7 + 1?"


def test_a_row_without_ground_truth_names_file_row_and_path(tmp_path):
    rows = training_rows(4)
    rows[2]["reward_model"]["ground_truth"] = None  # null in the parquet: row 3
    path = write_parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(DataError) as err:
        ParquetTask(ParquetTask.Options(path=str(path), format="verl")).load()
    assert str(err.value) == (
        f"{path}:3: missing field 'reward_model.ground_truth' (answer); it is null "
        "(set bad_rows: skip to drop such rows)"
    )
    del rows[2]["reward_model"]["ground_truth"]  # JSONL: the key itself absent
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = JSONLTask(JSONLTask.Options(path=str(jsonl), format="verl", bad_rows="skip"))
    assert len(task.load()) == 3
    assert task.skipped == [
        f"{jsonl}:3: missing field 'reward_model.ground_truth' (answer); reward_model has: style"
    ]


def test_a_dataset_task_reads_the_same_paths(tmp_path):
    import datasets

    datasets.Dataset.from_list(training_rows(3)).save_to_disk(str(tmp_path / "ds"))
    task = HFDatasetTask(HFDatasetTask.Options(path=str(tmp_path / "ds"), format="verl"))
    assert [(p.id, p.answer) for p in task.load()] == [
        ("openr1_easy/0", "8"), ("openr1_hard/1", "10"), ("openr1_easy/2", "2")
    ]  # fmt: skip


def test_a_question_field_holding_messages_is_rendered_as_messages(tmp_path):
    path = write_parquet(tmp_path / "chat.parquet", training_rows(1))
    options = ParquetTask.Options(
        path=str(path), question_field="prompt", answer_field="reward_model.ground_truth"
    )
    [p] = ParquetTask(options).load()
    assert p.question == "What is 7 + 1?" and len(p.metadata["messages"]) == 2


def verl_benchmark(path, **options):
    return get_registries()["benchmark"].build("verl", {"path": str(path), **options},
                                               BuildContext())  # fmt: skip


def test_the_verl_benchmark_reads_repeated_rows_as_one_problem_each(tmp_path):
    path = write_parquet(tmp_path / "valid.parquet", validation_rows())
    problems = verl_benchmark(path).load()
    # 3 + 4 + 3x4 + 2 + 2x8 = 37 rows; 3 + 4 + 3 + 2 + 2 = 14 problems
    assert len(problems) == 14
    seen = {}
    for p in problems:
        seen.setdefault(p.metadata["task"], []).append(p.metadata["repeats"])
    assert seen == {s: [r] * n for s, (n, r) in FIVE_SOURCES.items()}
    assert [p.id for p in problems if p.metadata["task"] == "aime"] == ["aime/0", "aime/1"]
    assert len(verl_benchmark(path, repeats="rows").load()) == 37
    assert len(verl_benchmark(path, limit=5).load()) == 5  # limit counts problems


def test_unequal_repeats_in_a_source_are_an_error_with_the_counts_and_the_fix(tmp_path):
    rows = validation_rows({"amc": (2, 4)})
    path = write_parquet(tmp_path / "valid.parquet", rows[:-1])  # the second problem 3x
    with pytest.raises(DataError, match=r"source 'amc' repeat problems unequally \(1 problems "
                       r"3x, 1 problems 4x\).*options.repeats: rows"):  # fmt: skip
        verl_benchmark(path).load()


def test_one_metric_set_per_source_repeats_as_samples_and_the_macro_average(tmp_path):
    path = write_parquet(tmp_path / "valid.parquet", validation_rows())
    bench = verl_benchmark(path)
    problems = bench.load()
    whole = EvalSet("verl", problems, MathVerifier(), ("math", {}), bench.k, bench.temperature,
                    bench.top_p)  # fmt: skip
    sets = source_sets(whole)
    assert [(s.name, len(s.problems), s.k) for s in sets] == [
        ("verl/olympiad_bench", 3, 1), ("verl/math", 4, 1), ("verl/amc", 3, 4),
        ("verl/minerva", 2, 1), ("verl/aime", 2, 8)]  # fmt: skip
    assert sets[4].description == {"source": "aime", "repeats": 8}
    right = {p.id: f"\\boxed{{{p.answer}}}" for p in problems}
    wrong = "\\boxed{-1}"
    greedy_ok = {"olympiad_bench": [1, 0, 0], "math": [1, 1, 0, 0], "amc": [1, 1, 1],
                 "minerva": [0, 0], "aime": [1, 0]}  # fmt: skip
    sampled_ok = {"amc": [4, 2, 0], "aime": [6, 2]}  # correct samples per problem
    script = {}
    for s in sets:
        source = s.description["source"]
        for i, p in enumerate(s.problems):
            hits = sampled_ok.get(source, [0] * len(s.problems))[i]
            samples = [right[p.id]] * hits + [wrong] * (s.k - hits)
            script[p.id] = (right[p.id] if greedy_ok[source][i] else wrong, samples)
    m = evaluate_sets(ScriptedPolicy(problems, script), Prompts(problems), sets,
                      max_new_tokens=8).metrics  # fmt: skip
    # amc: avg@4 = (4/4 + 2/4 + 0/4) / 3 = 0.5, greedy 3/3; aime: avg@8 = (6/8 + 2/8) / 2 =
    # 0.5 = the 16 rows' mean if each row were one sampled response, greedy 1/2
    assert m["eval/verl/amc/avg@4"] == 0.5 and m["eval/verl/amc/accuracy"] == 1.0
    assert m["eval/verl/aime/avg@8"] == 0.5 and m["eval/verl/aime/accuracy"] == 0.5
    scores = {"olympiad_bench": 1 / 3, "math": 0.5, "amc": 0.5, "minerva": 0.0, "aime": 0.5}
    for source, score in scores.items():  # score: avg@k where repeated, greedy elsewhere
        assert m[f"eval/verl/{source}/score"] == pytest.approx(score), source
    # macro over the five sources: (1/3 + 0.5 + 0.5 + 0 + 0.5) / 5 = 0.36667 (score) and
    # (1/3 + 0.5 + 1 + 0 + 0.5) / 5 = 0.46667 (greedy accuracy)
    for key in ("eval/verl", "eval/avg", "eval/avg_math"):
        assert m[f"{key}/score"] == pytest.approx(1.8333333 / 5)
        assert m[f"{key}/accuracy"] == pytest.approx(2.3333333 / 5)


def test_a_set_that_samples_anyway_keeps_its_k_and_a_file_without_sources_is_one_set(tmp_path):
    path = write_parquet(tmp_path / "valid.parquet", validation_rows())
    problems = verl_benchmark(path).load()
    assert {s.k for s in source_sets(EvalSet("verl", problems, None, k=16))} == {16}
    greedy_only = source_sets(EvalSet("verl", problems, None), sample_repeats=False)  # eval.k=1
    assert {s.k for s in greedy_only} == {1} and len(greedy_only) == 5
    # the repeats' samples use the preset's temperature even at k: 1 (no "ignored" error)
    assert "temperature" not in verl_benchmark(path, temperature=0.7).options.ignored_settings()
    rows = get_registries()["benchmark"].build("rows", {"path": str(path)}, BuildContext())
    assert "temperature" in rows.options.ignored_settings()
    plain = verl_benchmark(path, source_field=None, repeats="rows").load()
    [one] = source_sets(EvalSet("rows", plain, None))
    assert (one.name, len(one.problems), one.k, one.group) == ("rows", 37, 1, "")


def test_a_file_that_is_not_parquet_is_a_data_error_not_a_traceback(tmp_path):
    path = tmp_path / "train.parquet"
    path.write_text('{"question": "1+1?", "answer": "2"}\n')
    with pytest.raises(DataError, match=r"train.parquet: cannot be read as Parquet: .*magic"):
        ParquetTask(ParquetTask.Options(path=str(path), format="verl")).load()
