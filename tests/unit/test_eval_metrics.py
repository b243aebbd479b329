"""pass@k, avg@k and maj@k against hand-worked numbers."""

from math import comb

import pytest

from cgrpo.algo.eval_metrics import majority_correct, pass_at_k, summarize


@pytest.mark.parametrize(
    "c, k, expected",
    [
        (0, 1, 0.0),
        (0, 4, 0.0),
        (0, 8, 0.0),
        (1, 1, 1 / 8),  # one of 8 samples right: a single draw finds it 1 time in 8
        (1, 4, 1 - 35 / 70),  # C(7,4)=35 of the C(8,4)=70 draws of 4 miss it: 0.5
        (1, 8, 1.0),
        (4, 1, 0.5),
        (4, 4, 1 - 1 / 70),  # only the draw of the 4 wrong ones misses: C(4,4)/C(8,4)
        (4, 8, 1.0),
        (8, 1, 1.0),
        (8, 4, 1.0),
        (8, 8, 1.0),
    ],
)
def test_pass_at_k_is_the_unbiased_estimator(c, k, expected):
    assert pass_at_k(8, c, k) == pytest.approx(expected)
    if 8 - c >= k:  # the same as the combinatorial formula
        assert pass_at_k(8, c, k) == pytest.approx(1 - comb(8 - c, k) / comb(8, k))


def test_pass_at_k_refuses_impossible_counts():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 8)


def test_majority_vote_and_summary():
    assert majority_correct(["3", "4", "3", None], [True, False, True, False])
    assert not majority_correct(["4", "4", "3"], [False, False, True])
    assert majority_correct(["4", "3"], [True, False])  # a tie goes to the first seen
    assert not majority_correct([None, None], [False, False])
    out = summarize(
        [[True, False, False, False], [False] * 4], [["1", "2", "2", "2"], [None] * 4], 4
    )
    assert out == {"pass@4": 0.5, "avg@4": 0.125, "maj@4": 0.0}
