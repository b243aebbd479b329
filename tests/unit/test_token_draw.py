"""The hf backend's next-token draw: inverse-transform sampling in two levels (float32 over
the vocabulary, float64 running sums over blocks), for the whole batch at once."""

import torch

from cgrpo.builtins.policies.token_draw import BLOCK, TokenDraw, inverse_cdf_draw


def reference_draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One float64 running sum over the whole vocabulary (the previous implementation)."""
    cdf = probs.double().cumsum(-1)
    target = uniforms.double().unsqueeze(-1) * cdf[:, -1:]
    return torch.searchsorted(cdf, target, right=True).squeeze(-1)


def test_draws_follow_the_softmax():
    """200,000 rows, one draw each: every token's frequency is within 4.5 standard errors
    of its probability, and a token of probability 0 is never drawn."""
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.tensor([2.0, 1.0, float("-inf"), -1.0, 0.5]), -1)
    rows = 200_000
    draws = inverse_cdf_draw(probs.repeat(rows, 1), torch.rand(rows, generator=gen))
    freq = torch.bincount(draws, minlength=5).double() / rows
    assert freq[2] == 0
    se = (probs * (1 - probs) / rows).sqrt().clamp(min=1e-12)
    assert ((freq - probs).abs() / se).max().item() < 4.5, (freq, probs)


def test_two_levels_pick_what_one_float64_running_sum_picks():
    """A vocabulary of 2.5 blocks (the last one partial), 64 rows of random probabilities
    and uniforms: every pick equals the whole-vocabulary float64 search."""
    gen = torch.Generator().manual_seed(1)
    vocab = 2 * BLOCK + BLOCK // 2
    probs = torch.softmax(3 * torch.randn(64, vocab, generator=gen), -1)
    probs[:, 100:200] = 0.0  # filtered tokens (top-k / top-p)
    uniforms = torch.rand(64, generator=gen, dtype=torch.float64)
    assert torch.equal(inverse_cdf_draw(probs, uniforms), reference_draw(probs, uniforms))


def test_uniform_edges_pick_the_first_and_last_possible_tokens():
    probs = torch.tensor([[0.0, 0.5, 0.5, 0.0]]).repeat(2, 1)
    picked = inverse_cdf_draw(probs, torch.tensor([0.0, 1.0 - 2**-53], dtype=torch.float64))
    assert picked.tolist() == [1, 2]


def test_a_tiny_probability_keeps_its_share_at_a_large_vocabulary():
    """A token of probability 2e-8 at the far end of 151,936 is drawn when the uniform
    falls in its interval: its block is chosen on a float64 running sum, and the token on
    the block's own float64 running sum (a float32 sum near 1 moves in steps of 6e-8,
    where the token's interval would vanish)."""
    vocab = 151_936
    probs = torch.full((1, vocab), 1e-26)
    probs[0, 0] = 1.0  # almost all the mass
    probs[0, -2] = 2e-8
    cdf = probs.double().cumsum(-1)
    inside = ((cdf[0, -3] + cdf[0, -2]) / 2 / cdf[0, -1]).item()
    picked = inverse_cdf_draw(probs, torch.tensor([inside], dtype=torch.float64))
    assert picked.item() == vocab - 2


def test_draw_returns_the_token_and_its_untruncated_logprob():
    """The log-prob is log softmax(logits / T) of the token, before top-k: with top-k 2 at
    T = 0.5 only tokens 0 and 1 are drawn, and each carries log_softmax(2 x logits)."""
    torch.manual_seed(1)
    logits = torch.tensor([[3.0, 2.9, -5.0, 1.0]]).repeat(400, 1)
    token, logprob = TokenDraw(0.5, 1.0, 2)(logits, step=0)
    assert set(token.tolist()) == {0, 1}
    expected = torch.log_softmax(logits / 0.5, -1).gather(-1, token.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(logprob, expected)
    cold, _ = TokenDraw(0.01)(logits, step=0)
    assert (cold == 0).float().mean().item() > 0.99  # T -> 0 is greedy
    greedy, lp = TokenDraw(greedy=True)(logits, step=0)
    assert (greedy == 0).all() and torch.allclose(lp, torch.log_softmax(logits, -1)[:, 0])


def test_unseeded_draws_take_one_float64_uniform_per_row_from_torchs_rng():
    """53 random bits per row, from the RNG the trainer seeds every step."""
    logits = torch.zeros(1000, 7)
    torch.manual_seed(2)
    picked, _ = TokenDraw()(logits, step=0)
    torch.manual_seed(2)
    uniforms = torch.rand(1000, dtype=torch.float64)
    assert torch.equal(picked, inverse_cdf_draw(torch.softmax(logits, -1), uniforms))
