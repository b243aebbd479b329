"""``cgrpo critique`` says what it critiques: a problem's wrong answer here is another
problem's solution, and an empty critique is warned of."""

from cgrpo.types import Critique
from tests.helpers import REPO, run_cli


def test_the_wrong_answers_are_named_as_other_problems_solutions():
    out = run_cli("critique", str(REPO / "recipes" / "quickstart-cpu.yaml"), "-n", "2",
                  env={"COLUMNS": "200"})  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("no --samples: each problem is critiqued with its reference "
                               "solution and with another problem's solution")  # fmt: skip
    responses = [line for line in lines if line.startswith("response: ")]
    assert len(responses) == 2
    assert not responses[0].startswith("response: (another")
    assert responses[1].startswith("response: (another problem's solution, shown as a wrong ")
    # the critic saw the solution itself, not the note: the ground-truth critic says wrong
    assert "incorrect" in out.stdout.split(responses[1])[1].splitlines()[1]


def test_an_empty_critique_is_warned_of(capsys):
    from cgrpo.cli.critique import _warn_of_empty

    _warn_of_empty([Critique("Looks right.", "self"), Critique("  ", "self")], "self")
    err = capsys.readouterr().err
    assert err.startswith("cgrpo critique: warning: 1 of 2 critiques are empty (critic self)")
    _warn_of_empty([Critique("fine", "self")], "self")
    assert capsys.readouterr().err == ""
