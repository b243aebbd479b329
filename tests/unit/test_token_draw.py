"""Inverse-transform sampling of the next token (the hf backend's unseeded draw)."""

import torch

from cgrpo.builtins.policies.token_draw import InverseCdfSampler, inverse_cdf_draw


def test_draws_follow_the_softmax():
    """200,000 rows, one draw each: every token's frequency is within 4.5 standard errors
    of its probability, and a token at -inf is never drawn."""
    torch.manual_seed(0)
    logits = torch.tensor([2.0, 1.0, float("-inf"), -1.0, 0.5])
    probs = torch.softmax(logits, -1)
    rows = 200_000
    draws = inverse_cdf_draw(logits.repeat(rows, 1), torch.rand(rows))
    freq = torch.bincount(draws, minlength=5).double() / rows
    assert freq[2] == 0
    se = (probs * (1 - probs) / rows).sqrt().clamp(min=1e-12)
    assert ((freq - probs).abs() / se).max().item() < 4.5, (freq, probs)


def test_uniform_edges_pick_the_first_and_last_possible_tokens():
    scores = torch.tensor([[float("-inf"), 0.0, 0.0, float("-inf")]]).repeat(2, 1)
    picked = inverse_cdf_draw(scores, torch.tensor([0.0, 1.0 - 2**-24]))
    assert picked.tolist() == [1, 2]


def test_a_tiny_probability_keeps_its_share_at_a_large_vocabulary():
    """float64 running sums: a token of probability 2e-8 at the far end of 151,936 is drawn
    when the uniform falls in its interval (a float32 sum near 1 moves in steps of 6e-8:
    the token's interval would vanish)."""
    vocab = 151_936
    scores = torch.full((1, vocab), -60.0)
    scores[0, 0] = 0.0  # almost all the mass
    scores[0, -2] = -17.7  # p ~ 2e-8
    cdf = torch.softmax(scores.double(), -1).cumsum(-1)
    inside = ((cdf[0, -3] + cdf[0, -2]) / 2 / cdf[0, -1]).item()
    picked = inverse_cdf_draw(scores, torch.tensor([inside], dtype=torch.float64))
    assert picked.item() == vocab - 2


def test_the_processor_draws_one_float64_uniform_per_row_from_torchs_rng():
    """53 random bits per row (a float32 uniform could not land in an interval of 2e-8
    near 1), from the global RNG that the trainer seeds every step."""
    scores = torch.zeros(1000, 7)
    torch.manual_seed(2)
    picked = InverseCdfSampler(1.0, 1.0, 0)(None, scores.clone()).argmax(-1)
    torch.manual_seed(2)
    assert torch.equal(picked, inverse_cdf_draw(scores, torch.rand(1000, dtype=torch.float64)))
    torch.manual_seed(2)
    assert not torch.equal(picked, inverse_cdf_draw(scores, torch.rand(1000)))


def test_the_processor_leaves_only_the_drawn_token_and_applies_top_k():
    torch.manual_seed(1)
    scores = torch.tensor([[3.0, 2.9, -5.0, 1.0]]).repeat(400, 1)
    out = InverseCdfSampler(1.0, 1.0, 2)(None, scores.clone())
    assert ((out == 0).sum(-1) == 1).all() and torch.isinf(out).sum(-1).eq(3).all()
    assert set(out.argmax(-1).tolist()) == {0, 1}  # top-k 2 keeps the two largest
    cold = InverseCdfSampler(0.01, 1.0, 0)(None, scores.clone()).argmax(-1)
    assert (cold == 0).float().mean().item() > 0.99  # T -> 0 is greedy
