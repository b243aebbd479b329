"""Refinement selection and group mixing (ALGORITHM.md section 7, items 1-3 and 7)."""

import random

import pytest
import torch

from cgrpo.algo.mixing import build_group, collate, cut_at_eos, select_refinements
from cgrpo.types import Completion

EOS = 2


def comp(ids, lps=None):
    return Completion(list(ids), lps if lps is not None else [-0.1] * len(ids), "", "stop")


def test_first_correct_in_response_order_is_kept():
    assert select_refinements([False, True, True, False], 1, "first") == [1]
    assert select_refinements([False, True, True, False], 2, "none") == [1, 2]


def test_fallbacks_when_none_is_correct():
    assert select_refinements([False, False, False], 1, "first") == [0]
    assert select_refinements([False, False, False], 1, "none") == []
    picks = {select_refinements([False] * 5, 1, "random", random.Random(s))[0] for s in range(40)}
    assert len(picks) > 1 and picks <= set(range(5))


def test_partial_correct_fills_remaining_slots_after_the_correct_ones():
    assert select_refinements([False, True, False], 2, "first") == [1, 0]
    assert select_refinements([False, True, False], 2, "none") == [1]


def test_k_must_be_positive():
    with pytest.raises(ValueError):
        select_refinements([True], 0, "first")


def test_cut_at_eos_keeps_the_eos_and_keeps_length_cut_responses():
    assert cut_at_eos([5, 6, EOS, 7, EOS], [EOS]) == ([5, 6, EOS], True)
    assert cut_at_eos([5, 6, 7], [EOS]) == ([5, 6, 7], False)


def test_cut_at_eos_cuts_at_the_first_of_several_eos_ids():
    assert cut_at_eos([5, 9, 6, 8, 9], [8, 9]) == ([5, 9], True)
    assert cut_at_eos([5, 8, 6, 9], [9, 8]) == ([5, 8], True)
    assert cut_at_eos([8], [9, 8]) == ([8], True)
    assert cut_at_eos([], [8]) == ([], False)
    assert cut_at_eos((5, 6), [8]) == ([5, 6], False)  # any sequence; a list comes back


def test_group_has_g_initial_plus_k_refinements_sharing_one_group_id():
    prompt = [10, 11, 12]
    rows = build_group(
        3, prompt, [comp([5, EOS])] * 7, [0.0] * 7, [comp([6, 7, EOS])], [1.0], [EOS]
    )
    assert len(rows) == 8
    assert {r.group for r in rows} == {3}
    assert [r.is_refinement for r in rows] == [False] * 7 + [True]


def test_refinement_row_is_original_prompt_plus_refinement_tokens_only():
    question = [10, 11, 12]
    previous = [40, 41, 42, EOS]
    critique = [50, 51, 52]
    refinement_prompt = question + previous + critique  # what the refinement was sampled from
    del refinement_prompt  # ... and must not appear in the training row
    refinement = comp([60, 61, EOS, 99])  # sampled past EOS: cut at the first EOS
    rows = build_group(0, question, [comp(previous)], [0.0], [refinement], [1.0], [EOS])
    row = rows[-1]
    assert row.prompt_ids == question
    assert row.response_ids == [60, 61, EOS]
    batch = collate(rows, pad_id=0)
    full = [
        t
        for t, m in zip(batch.input_ids[1].tolist(), batch.attention_mask[1].tolist(), strict=False)
        if m
    ]
    assert full == [*question, 60, 61, EOS]
    for tok in critique + previous[:-1]:
        assert tok not in full


def test_sampler_logprobs_as_tensor_rows_collate_like_lists():
    """The hf backend hands over rows of its (B, T) tensor; vLLM and plugins give lists."""
    lps = [-0.5, -0.25, -0.125, -1.0]  # past the EOS: cut with the ids
    batch_tensor = torch.tensor([lps, [0.0] * 4])
    as_list = build_group(0, [10], [comp([5, 6, EOS, 8], lps)], [0.0], [], [], [EOS])
    as_row = build_group(0, [10], [comp([5, 6, EOS, 8], batch_tensor[0])], [0.0], [], [], [EOS])
    a, b = collate(as_list, pad_id=0), collate(as_row, pad_id=0)
    assert torch.equal(a.old_logprobs, b.old_logprobs)
    assert b.old_logprobs.tolist() == [[-0.5, -0.25, -0.125]]


def test_collate_masks_and_alignment():
    rows = build_group(0, [10, 11], [comp([5, 6, EOS])], [0.0], [comp([7, EOS])], [1.0], [EOS])
    rows[0].prompt_ids = [9, 10, 11]  # prompts of different length are left-padded
    b = collate(rows, pad_id=0)
    assert b.prompt_len == 3 and b.response_ids.shape == (2, 3)
    assert b.input_ids.tolist() == [[9, 10, 11, 5, 6, EOS], [0, 10, 11, 7, EOS, 0]]
    assert b.attention_mask.tolist() == [[1] * 6, [0, 1, 1, 1, 1, 0]]
    assert b.position_ids[1, 1:5].tolist() == [0, 1, 2, 3]
    assert b.response_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert b.refinement_mask.tolist() == [[0, 0, 0], [1, 1, 0]]
    initial = b.response_mask - b.refinement_mask
    # the union of refinement and initial masks is the response mask, and they are disjoint
    assert torch.equal(initial + b.refinement_mask, b.response_mask)
    assert (initial * b.refinement_mask).sum() == 0
    assert b.old_logprobs[1].tolist() == [0.0, 0.0, 0.0]  # refinements carry no old logprobs


def test_random_selection_ignores_verdicts_and_is_seeded():
    # selection="random": K drawn among all candidates, correct or not; fallback unused
    picks = {
        tuple(
            select_refinements([True, False, False, False], 1, "none", random.Random(s), "random")
        )
        for s in range(40)
    }
    assert picks == {(0,), (1,), (2,), (3,)}  # not always the correct one
    again = select_refinements([True] * 7, 2, "first", random.Random(5), "random")
    assert again == select_refinements([False] * 7, 2, "none", random.Random(5), "random")
    assert again == sorted(again) and len(set(again)) == 2
