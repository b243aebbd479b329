"""Rewards from a Python file (``python``) and weighted sums of verifiers (``weighted``)."""

import logging

import pytest

from cgrpo.config import load_recipe
from cgrpo.errors import RecipeError
from cgrpo.plugins import get_registries
from cgrpo.types import Problem, Verdict
from tests.unit.test_recipe import GOOD, write

REWARDS = """
from cgrpo.types import Verdict

def score(response, problem):
    return response.strip().endswith(problem.answer)

def length_penalty(response, problem):
    return -0.01 * len(response)

def graded(response, problem):
    return Verdict(0.5, True, "x", "")

def broken(response, problem):
    return 1 / 0

def three(a, b, c):
    return 1.0
"""

PROBLEM = Problem("1", "What is 1 + 1?", "2")


def verifier(name, options):
    return get_registries()["verifier"].build(name, options, None)


def test_a_function_in_a_file_is_the_reward(tmp_path, caplog):
    path = tmp_path / "rewards.py"
    path.write_text(REWARDS)
    assert verifier("python", {"path": str(path)}).verify("so 2", PROBLEM) == Verdict(1.0, True)
    assert verifier("python", {"path": str(path)}).verify("3", PROBLEM) == Verdict(0.0, False)
    penalty = verifier(
        "python", {"path": str(path), "function": "length_penalty", "correct_at": -0.05}
    )
    assert penalty.verify("abc", PROBLEM) == Verdict(pytest.approx(-0.03), True)
    assert (
        verifier("python", {"path": str(path), "function": "graded"}).verify("", PROBLEM).score
        == 0.5
    )
    with caplog.at_level(logging.WARNING):
        out = verifier("python", {"path": str(path), "function": "broken"}).verify("2", PROBLEM)
    assert out == Verdict(0.0, False, None, "error")
    assert "ZeroDivisionError" in caplog.text and "rewards.py:broken" in caplog.text


@pytest.mark.parametrize(
    "options, needle",
    [
        ("{path: missing.py}", "reward file not found"),
        ("{path: REWARDS, function: nope}", "no function 'nope'; functions there: broken"),
        ("{path: REWARDS, function: three}", "must take (response, problem)"),
    ],
)
def test_a_bad_reward_file_is_a_recipe_error(tmp_path, options, needle):
    path = tmp_path / "rewards.py"
    path.write_text(REWARDS)
    text = GOOD + f"verifier: {{name: python, options: {options.replace('REWARDS', str(path))}}}\n"
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, text))
    assert needle in err.value.render()


def test_weighted_sum_with_the_first_part_deciding_correctness(tmp_path):
    path = tmp_path / "rewards.py"
    path.write_text(REWARDS)
    parts = [
        {"name": "math", "weight": 1.0},
        {
            "name": "python",
            "options": {"path": str(path), "function": "length_penalty"},
            "weight": 2.0,
        },
    ]
    weighted = verifier("weighted", {"parts": parts})
    out = weighted.verify("\\boxed{2}", PROBLEM)  # 9 characters: penalty -0.09, x2
    assert out.correct and out.score == pytest.approx(1.0 - 0.18)
    wrong = weighted.verify("\\boxed{3}", PROBLEM)
    assert not wrong.correct and wrong.score == pytest.approx(-0.18)
    text = GOOD + "verifier: {name: weighted, options: {parts: [{name: mathh}]}}\n"
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, text))
    assert "unknown verifier 'mathh'" in err.value.render()
