"""Packing rows into micro-batches by sequence count and padded tokens (dynamic batching),
and the released code's micro-batches (verl's token budget) for the entropy and KL means."""

import pytest

from cgrpo.algo.mixing import (
    balanced_partition,
    pack_micro_batches,
    token_budget_micro_batch_count,
    token_budget_micro_batch_tokens,
)


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


def test_balanced_partition_is_the_largest_differencing_method():
    # Karmarkar-Karp on 8, 7, 6, 5, 4 into 2 sets: 8|7 and 6|5 (spread 1 each), then 4 with
    # 8|7 (the larger largest set) gives 11 = 4+7 | 8, then with 6|5: 11+5 | 8+6 = 16 | 14.
    # (The best split is 15 | 15: the method is a heuristic, and verl's.)
    assert balanced_partition([8, 7, 6, 5, 4], 2) == [[1, 3, 4], [0, 2]]
    assert balanced_partition([8, 7, 6, 5, 4], 5) == [[0], [1], [2], [3], [4]]
    with pytest.raises(ValueError, match="non-empty"):
        balanced_partition([1, 2], 3)


def test_token_budget_micro_batches_as_verls_dynamic_batching_forms_them():
    # (prompt, response): prompt + response = 8, 7, 6, 5, 4 = 30 tokens; budget 16 -> 2
    # micro-batches {1, 3, 4} and {0, 2} (above): response tokens 6+1+3 = 10 and 5+4 = 9
    lengths = [(3, 5), (1, 6), (2, 4), (4, 1), (1, 3)]
    assert token_budget_micro_batch_count(lengths, 16) == 2
    assert token_budget_micro_batch_tokens(lengths, 16) == [9, 10, 9, 10, 10]
    assert token_budget_micro_batch_count(lengths, 30) == 1  # everything fits one
    assert token_budget_micro_batch_tokens(lengths, 30) == [19] * 5
    # another GPU needed 9: verl gives every GPU that count, one row each at most here
    assert token_budget_micro_batch_tokens(lengths, 16, parts=9) == [5, 6, 4, 1, 3]
    assert token_budget_micro_batch_count(lengths, 1) == 5
