"""Tasks (data sources) and the resumable data stream."""

import json

import pytest

from cgrpo.builtins.tasks.arithmetic import ArithmeticTask
from cgrpo.builtins.tasks.files import CSVTask, JSONLTask, ParquetTask
from cgrpo.errors import DataError
from cgrpo.train.data import DataStream


def jsonl(tmp_path, rows):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_with_field_mapping(tmp_path):
    path = jsonl(tmp_path, [{"problem": "1+1?", "gt": 2, "sol": "2", "uid": "a"}])
    task = JSONLTask(
        JSONLTask.Options(
            path=str(path),
            question_field="problem",
            answer_field="gt",
            solution_field="sol",
            id_field="uid",
        )
    )
    [p] = task.load()
    assert (p.id, p.question, p.answer, p.solution) == ("a", "1+1?", "2", "2")


def test_bad_rows_name_file_and_line(tmp_path):
    path = jsonl(
        tmp_path,
        [
            {"question": "ok", "answer": "1"},
            {"question": "no answer"},
            "{not json",
            {"question": "  ", "answer": "3"},
        ],
    )
    with pytest.raises(DataError, match=r"d.jsonl:2: missing field 'answer'"):
        JSONLTask(JSONLTask.Options(path=str(path))).load()
    task = JSONLTask(JSONLTask.Options(path=str(path), bad_rows="skip"))
    assert [p.question for p in task.load()] == ["ok"]
    assert len(task.skipped) == 3
    assert any(":3: invalid JSON" in s for s in task.skipped)
    assert any(":4: field 'question' (question) is empty" in s for s in task.skipped)


def test_bytes_that_are_not_utf8_name_file_and_line(tmp_path):
    """A latin-1 byte on line 2 used to crash `cgrpo run` with a UnicodeDecodeError
    traceback naming neither the file nor the line."""
    path = tmp_path / "d.jsonl"
    path.write_bytes(
        b'{"question": "ok", "answer": "1"}\n'
        b'{"question": "caf\xe9?", "answer": "2"}\n'
        b'{"question": "fine", "answer": "3"}\n'
    )
    with pytest.raises(DataError, match=r"d.jsonl:2: not UTF-8 \(byte 0xe9 at column 18\)"):
        JSONLTask(JSONLTask.Options(path=str(path))).load()
    task = JSONLTask(JSONLTask.Options(path=str(path), bad_rows="skip"))
    assert [p.question for p in task.load()] == ["ok", "fine"]
    assert task.skipped and ":2: not UTF-8" in task.skipped[0]
    csv_path = tmp_path / "d.csv"
    csv_path.write_bytes(b"question,answer\nok,1\ncaf\xe9,2\n")
    with pytest.raises(DataError, match=r"d.csv:3: not UTF-8"):
        CSVTask(CSVTask.Options(path=str(csv_path))).load()


def test_missing_file_is_a_recipe_error_at_check_time(tmp_path):
    from cgrpo.config import load_recipe
    from cgrpo.errors import RecipeError

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {{path: org/m}}\ndata: {{task: {{name: jsonl, options: "
        f"{{path: {tmp_path / 'nope.jsonl'}}}}}}}\n"
    )
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe)
    [problem] = err.value.problems
    assert problem.path == "data.task.options.path" and "not found" in problem.message


def test_csv_and_parquet(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("question,answer\nWhat?,4\n,5\n")
    with pytest.raises(DataError, match=r"d.csv:3"):
        CSVTask(CSVTask.Options(path=str(csv_path))).load()
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"question": ["a?", "b?"], "answer": ["1", "2"]}), tmp_path / "d.pq")
    problems = ParquetTask(ParquetTask.Options(path=str(tmp_path / "d.pq"))).load()
    assert [p.answer for p in problems] == ["1", "2"]


def test_arithmetic_is_deterministic_and_correct():
    a = ArithmeticTask(ArithmeticTask.Options(size=50, ops=["+", "-", "*"])).load()
    b = ArithmeticTask(ArithmeticTask.Options(size=50, ops=["+", "-", "*"])).load()
    assert a == b
    for p in a:
        x, op, y = p.question.removeprefix("What is ").rstrip("?").split()
        assert str(eval(f"{x}{op}{y}")) == p.answer
        assert p.solution.endswith(f"\\boxed{{{p.answer}}}.")


def test_data_stream_epochs_and_exact_restore():
    items = ArithmeticTask(ArithmeticTask.Options(size=5)).load()
    stream = DataStream(items, seed=3)
    first = [p.id for p in stream.next_batch(4)]
    state = stream.state_dict()
    rest = [p.id for p in stream.next_batch(6)]  # crosses into epoch 1
    assert sorted(first + rest[:1]) == sorted(p.id for p in items)  # epoch 0 is a permutation
    assert stream.epoch == 1
    again = DataStream(items, seed=3)
    again.load_state_dict(state)
    assert [p.id for p in again.next_batch(6)] == rest
    with pytest.raises(ValueError, match="repeat or skip"):
        DataStream(items[:4], seed=3).load_state_dict(state)


def test_arithmetic_carry_filter_and_unchanged_default():
    with_carry = ArithmeticTask(ArithmeticTask.Options(size=40, carry="with")).load()
    without = ArithmeticTask(ArithmeticTask.Options(size=40, carry="without")).load()

    def carries(p):
        a, _, b = p.question.removeprefix("What is ").rstrip("?").split()
        return int(a) % 10 + int(b) % 10 >= 10

    assert all(carries(p) for p in with_carry)
    assert not any(carries(p) for p in without)
    default = ArithmeticTask(ArithmeticTask.Options(size=40)).load()
    assert any(carries(p) for p in default) and not all(carries(p) for p in default)
