"""Packing rows into micro-batches by sequence count and padded tokens (dynamic batching)."""

import pytest

from cgrpo.algo.mixing import pack_micro_batches


def padded(lengths, plan):
    """Tokens each micro-batch allocates: rows x (longest prompt + longest response)."""
    return [
        len(idx) * (max(lengths[i][0] for i in idx) + max(lengths[i][1] for i in idx))
        for idx in plan
    ]


def test_count_cap_only_takes_rows_longest_first():
    lengths = [(4, 2), (4, 10), (4, 5), (4, 1), (4, 7)]
    # totals 6, 14, 9, 5, 11 -> order 1, 4, 2, 0, 3
    assert pack_micro_batches(lengths, 2) == [[1, 4], [2, 0], [3]]


def test_token_cap_worked_example():
    # prompt 10 for all; responses 90, 80, 20, 10, 10, 5 -> totals 100, 90, 30, 20, 20, 15
    lengths = [(10, 20), (10, 90), (10, 10), (10, 80), (10, 5), (10, 10)]
    plan = pack_micro_batches(lengths, max_seqs=8, max_tokens=200)
    # [1, 3]: 2 x (10 + 90) = 200 fits; adding row 0 would need 3 x 100 = 300
    # [0, 2, 5, 4]: 4 x (10 + 20) = 120; all four short rows share one pass
    assert plan == [[1, 3], [0, 2, 5, 4]]
    assert padded(lengths, plan) == [200, 120]


def test_padded_size_uses_longest_prompt_and_longest_response_separately():
    # row 0: long prompt, short response; row 1: short prompt, long response
    lengths = [(50, 10), (10, 45)]
    # together: 2 x (50 + 45) = 190 > 150, although each row alone is 60 / 55 tokens
    assert pack_micro_batches(lengths, 8, max_tokens=150) == [[0], [1]]
    assert pack_micro_batches(lengths, 8, max_tokens=190) == [[0, 1]]


def test_every_row_once_and_caps_hold():
    import random

    rng = random.Random(0)
    lengths = [(rng.randint(1, 40), rng.randint(0, 200)) for _ in range(57)]
    plan = pack_micro_batches(lengths, max_seqs=6, max_tokens=600)
    assert sorted(i for idx in plan for i in idx) == list(range(57))
    assert all(len(idx) <= 6 for idx in plan)
    assert all(size <= 600 for size in padded(lengths, plan))


def test_a_row_over_the_cap_gets_its_own_micro_batch():
    assert pack_micro_batches([(10, 10), (100, 100), (5, 5)], 4, max_tokens=50) == [
        [1],
        [0, 2],
    ]


def test_empty_response_counts_as_one_token_like_collate():
    assert pack_micro_batches([(3, 0), (3, 0)], 4, max_tokens=8) == [[0, 1]]
    assert pack_micro_batches([(3, 0), (3, 0)], 4, max_tokens=7) == [[0], [1]]


def test_bad_count_cap():
    with pytest.raises(ValueError):
        pack_micro_batches([(1, 1)], 0)
