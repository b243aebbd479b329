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


def test_a_function_in_a_file_is_the_reward(tmp_path):
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
    out = verifier("python", {"path": str(path), "function": "broken"}).verify("2", PROBLEM)
    assert out.score == 0.0 and not out.correct and out.raised
    # named with the line that raised (REWARDS' line 14: return 1 / 0), traceback kept
    assert out.reason == f"error: ZeroDivisionError: division by zero ({path}:14)"
    assert out.trace.startswith("Traceback") and "return 1 / 0" in out.trace


def test_a_raising_verifier_scores_zero_and_the_pool_shows_the_first_error_once(caplog):
    """Any verifier (a plugin's too) that raises gives reward 0 naming where; the pool
    logs the first traceback once, not once per response."""
    from cgrpo.train.metrics import rollout_metrics, step_alerts
    from cgrpo.train.rollout import Rollout
    from cgrpo.train.verify_pool import VerifyPool

    class Broken:
        def verify(self, response, problem):
            raise ValueError(f"cannot judge {response}")

    pool = VerifyPool(1)
    with caplog.at_level(logging.WARNING):
        first = pool.verify(Broken(), None, [("a", PROBLEM), ("b", PROBLEM)])
        again = pool.verify(Broken(), None, [("c", PROBLEM)])
    assert [v.raised for v in first + again] == [True, True, True]
    assert first[1].reason.startswith("error: ValueError: cannot judge b (")
    assert "test_reward_file.py:" in first[0].reason
    assert caplog.text.count("Traceback (most recent call last)") == 1
    assert "cannot judge a" in caplog.text and "cannot judge c" not in caplog.text

    class Record:  # what rollout_metrics reads of a sampled response
        def __init__(self, verdict):
            self.verdict, self.kind, self.problem, self.group = verdict, "initial", PROBLEM, 0
            self.completion = type("C", (), {"token_ids": [1], "finish_reason": "stop"})()
            self.prompt_tokens, self.kept, self.critique = 3, False, None

    ro = Rollout(rows=[], records=[Record(v) for v in [*first, Verdict(1.0, True)]],
                 seconds={}, critiques=[])  # fmt: skip
    metrics = rollout_metrics(ro)
    assert metrics["verify/errors"] == 2.0  # 2 of the 3 responses raised
    assert "2 verifications raised" in " ".join(step_alerts(metrics))


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
