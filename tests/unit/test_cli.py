"""The real ``cgrpo`` command line: exit codes and what users read."""

import pytest

from tests.helpers import REPO, run_cli


def test_help_and_version():
    out = run_cli("--help")
    assert out.returncode == 0 and "run" in out.stdout and "check" in out.stdout
    assert run_cli("--version").stdout.startswith("cgrpo ")


def test_list_shows_builtins_by_kind():
    out = run_cli("list", env={"COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    for title in (
        "policy components",
        "critic components",
        "verifier components",
        "advantage components",
        "task components",
    ):
        assert title in out.stdout
    for name in (
        "hf",
        "ground_truth",
        "indicative",
        "math",
        "choice",
        "exact",
        "grpo",
        "rloo",
        "reinforce_pp",
        "jsonl",
        "arithmetic",
    ):
        assert name in out.stdout
    assert "timeout_s=5" in out.stdout  # options with defaults
    assert "'cgrpo[data]'" in out.stdout  # install hints keep their extras (not markup)


def test_list_piped_is_markdown_with_whole_words_and_summaries():
    """`cgrpo list | cat`: no terminal, so Markdown rows, one per component, nothing
    wrapped mid-word or cut (rich would fold cells to 80 columns)."""
    out = run_cli("list", "wrong_answer")
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("| own_sample |"))
    # the docstring's whole first paragraph, though its first sentence spans two lines
    assert row.endswith(
        "| The warm-up model's own sampled response when the verifier finds it wrong (one "
        "seeded generate call per warm-up step, the recipe's sampling settings); where the "
        "model was right, a perturbed answer instead. |"
    )
    assert "╇" not in out.stdout and "│" not in out.stdout
    table = run_cli("list", "wrong_answer", "--format", "table")
    assert "┃ name" in table.stdout


def test_an_empty_kind_says_how_to_add_one():
    from cgrpo.cli.listing import markdown

    text = markdown("observer", [])
    assert "no observers registered: install a tracker plugin (cgrpo-tensorboard" in text
    assert "register_observers" in text and "|" not in text
    assert "a plugin adds them" in markdown("critic", [])


def test_list_unknown_kind_is_a_usage_error():
    out = run_cli("list", "critc")
    assert out.returncode == 2 and "did you mean 'critic'" in out.stderr.lower()


def test_check_good_recipe_prints_resolved_and_exits_0():
    out = run_cli("check", str(REPO / "recipes" / "quickstart-cpu.yaml"), "train.steps=3")
    assert out.returncode == 0, out.stderr
    assert "recipe OK" in out.stdout and "steps: 3" in out.stdout


def test_check_three_mistakes_exit_2_and_lists_all(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(
        "model: {path: org/model}\n"
        "data: {task: arithmetic}\n"
        "algorithm: {samples_per_promt: 4}\n"  # typo
        "critic: ground_truht\n"  # unknown component
        "sampling: {temperature: -1}\n"
    )  # bad value
    out = run_cli("check", str(recipe))
    assert out.returncode == 2
    err = out.stderr
    assert "3 problems" in err
    assert "algorithm.samples_per_promt" in err and "samples_per_prompt" in err
    assert "critic.name" in err and "ground_truth" in err
    assert "sampling.temperature" in err


def test_usage_errors_exit_2():
    assert run_cli("check").returncode == 2
    assert run_cli("frobnicate").returncode == 2


def test_list_and_check_do_not_import_torch():
    code = (
        "import sys; from cgrpo.cli.main import main; main(['list']); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_the_resume_hint_names_resume_once():
    from cgrpo.app.run import resume_command

    assert resume_command("r.yaml", ["a=1"]) == "cgrpo run r.yaml a=1 resume=auto"
    assert resume_command("r.yaml", ["resume=auto", "a=1"]) == "cgrpo run r.yaml a=1 resume=auto"
    assert resume_command("r.yaml", ["resume=runs/x/checkpoints/step-2"]) == (
        "cgrpo run r.yaml resume=auto"
    )


def test_check_reads_the_data_and_lists_every_bad_row_with_file_and_line(tmp_path):
    """`cgrpo check` used to test only that a data file exists; it now reads it (as the run
    would, but listing every bad row instead of stopping at the first) and exits 2."""
    long = "many words " * 60
    data = tmp_path / "d.jsonl"
    data.write_text(
        '{"question": "What is 1 + 1?", "answer": "2"}\n'
        '{"question": "x"}\n'
        "not json\n"
        f'{{"question": "{long}", "answer": "3"}}\n'
        '{"question": "What is 2 + 2?", "answer": ""}\n'
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    args = [
        "check",
        str(REPO / "recipes" / "quickstart-cpu.yaml"),
        "data.task.name=jsonl",
        f"data.task.options.path={data}",
        "sft.steps=0",  # the rows have no solutions to warm up on
        "eval.every=5",
        f"eval.task={{name: jsonl, options: {{path: {empty}}}}}",
        f"model.path={tmp_path / 'tiny'}",
    ]
    wide = {"COLUMNS": "1000"}  # rich wraps long lines, inside a long path too (xdist's)
    out = run_cli(*args, cwd=tmp_path, env=wide)
    assert out.returncode == 2, out.stdout + out.stderr
    text = " ".join(out.stdout.split())
    for needle in (
        f"{data}:2: missing field 'answer'",
        f"{data}:3: invalid JSON",
        f"{data}:4: prompt of",
        f"{data}:5: field 'answer' (answer) is empty",
        f"{empty}: no usable rows",
    ):
        assert needle in text, needle
    assert "the data has problems" in out.stderr and "recipe OK" not in out.stdout
    skipped = run_cli(*args, "--data-rows", "0", cwd=tmp_path)
    assert skipped.returncode == 0, skipped.stderr
    first = run_cli(*args[:-3], args[-1], "--data-rows", "1", cwd=tmp_path)
    assert first.returncode == 0 and "data.task (jsonl): 1 usable rows read" in first.stdout


QUICKSTART = str(REPO / "recipes" / "quickstart-cpu.yaml")
NO_SOLUTIONS = "no problem of the warm-up's data (sft.task, else data.task) has a reference"


def _said(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"\xff\xfe not utf-8\n", ":1: not UTF-8 (byte 0xff at column 1)"),
        (b"", ": no usable rows"),
        (b'{"question": "What is 1 + 1?"}\n', ":1: missing field 'answer'"),
    ],
)
def test_run_refuses_bad_data_as_check_does_before_building_anything(
    tmp_path, monkeypatch, capsys, content, needle
):
    """cgrpo run reads the data with cgrpo check's reader before it creates the model or
    the run directory: exit 2 and the same file:line."""
    from cgrpo.cli.main import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "1000")  # rich wraps long lines, inside a long path too
    data = tmp_path / "d.jsonl"
    data.write_bytes(content)
    args = [QUICKSTART, "data.task.name=jsonl", f"data.task.options.path={data}",
            "model.path=tiny", "run.output_dir=runs", "sft.steps=0"]  # fmt: skip
    assert main(["check", *args]) == 2
    checked = _said(capsys.readouterr().out)
    assert main(["run", *args]) == 2
    refused = _said(capsys.readouterr().err)
    assert f"{data}{needle}" in checked and f"{data}{needle}" in refused
    assert "Traceback" not in refused
    assert not (tmp_path / "runs").exists() and not (tmp_path / "tiny").exists()


def test_check_reports_everything_run_would_refuse_at_once(tmp_path, monkeypatch, capsys):
    """A warm-up on data without reference solutions, a missing benchmark copy and a
    missing model, in one check: none of them hides another."""
    from cgrpo.cli.main import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "1000")  # rich wraps long lines, inside a long path too
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "What is 1 + 1?", "answer": "2"}\n')
    missing = "eval.benchmarks=[{name: math-500, options: {path: m500.jsonl}}]"
    args = [QUICKSTART, "data.task.name=jsonl", f"data.task.options.path={data}",
            "eval.every=5", missing]  # fmt: skip
    assert main(["check", *args]) == 2  # sft.steps 200: the warm-up needs solutions
    found = capsys.readouterr()
    text = _said(found.out + found.err)
    assert (
        "no problem of the warm-up's data (sft.task, else data.task) has a reference solution"
        in text
    )
    assert "m500.jsonl: no such file or directory" in text
    assert main(["run", *args, "model.path=tiny"]) == 2
    assert (
        "no problem of the warm-up's data (sft.task, else data.task) has a reference solution"
        in _said(capsys.readouterr().err)
    )
    assert not (tmp_path / "runs").exists() and not (tmp_path / "tiny").exists()

    assert main(["check", *args, "model.create=null", "model.path=./nomodel"]) == 2
    found = capsys.readouterr()
    text = _said(found.out + found.err)
    for needle in ("model.path: directory not found: ./nomodel",
                   "m500.jsonl: no such file or directory",
                   NO_SOLUTIONS):  # fmt: skip
        assert needle in text, needle


def test_demonstrations_without_solutions_are_refused_by_check_and_run(
    tmp_path, monkeypatch, capsys
):
    """algorithm.demonstrations adds each problem's reference solution to its group: data
    without one is a problem cgrpo check lists and cgrpo run refuses before building."""
    from cgrpo.cli.main import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "1000")
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "What is 1 + 1?", "answer": "2"}\n')
    # micro-batches of 8 divide the 8 x (G + K + D = 9) rows
    args = [QUICKSTART, "data.task.name=jsonl", f"data.task.options.path={data}",
            "sft.steps=0", "algorithm.demonstrations.per_group=1",
            "algorithm.micro_batch_size=8"]  # fmt: skip
    needle = "algorithm.demonstrations.per_group > 0 but no training problem (data.task) has"
    assert main(["check", *args]) == 2
    assert needle in _said(capsys.readouterr().out)
    assert main(["run", *args, "model.path=tiny"]) == 2
    assert needle in _said(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "tiny").exists()
