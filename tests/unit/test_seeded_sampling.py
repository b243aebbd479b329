"""Counter-based seeded sampling (cgrpo.builtins.policies.seeded_sampling): the hash is
splitmix64, the noise is Gumbel per row, and a Gumbel-max draw follows the softmax."""

import math

import pytest
import torch

from cgrpo.builtins.policies.seeded_sampling import (
    SeededSampler,
    gumbel_noise,
    row_seeds,
    stream,
)


def splitmix64_reference(seed: int, count: int) -> list[int]:
    """The published splitmix64 generator in plain Python integers (unsigned 64-bit)."""
    mask = (1 << 64) - 1
    out, state = [], seed & mask
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return out


@pytest.mark.parametrize("seed", [0, 1234567, -5, 2**62 + 17])
def test_stream_is_splitmix64(seed):
    expected = splitmix64_reference(seed, 6)
    got = stream(torch.tensor([seed]), torch.arange(6)).tolist()
    assert [g & ((1 << 64) - 1) for g in got] == expected
    assert [stream(torch.tensor([seed]), i).item() & ((1 << 64) - 1) for i in range(6)] == expected


def test_splitmix64_known_values():
    """Seed 0's first value, as printed by the reference C implementation."""
    assert splitmix64_reference(0, 1)[0] == 0xE220A8397B1DCDAF


def test_noise_is_a_function_of_seed_and_step_only():
    seeds = torch.tensor([7, 8, 9])
    full = gumbel_noise(seeds, 4, 50)
    alone = gumbel_noise(seeds[1:2], 4, 50)
    assert torch.equal(full[1:2], alone)
    assert torch.equal(gumbel_noise(torch.tensor([9, 7]), 4, 50), full[[2, 0]])
    assert not torch.equal(gumbel_noise(seeds, 5, 50), full)
    state = torch.random.get_rng_state()
    gumbel_noise(seeds, 6, 50)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched


def test_noise_is_standard_gumbel():
    g = gumbel_noise(torch.arange(200), 0, 1000).flatten().double()
    assert g.mean().item() == pytest.approx(0.5772, abs=0.01)  # Euler-Mascheroni
    assert g.var().item() == pytest.approx(math.pi**2 / 6, rel=0.02)
    assert g.max().item() < 16.7  # float32 uniforms cut the tail at -log(-log(1 - 2^-24))


def test_gumbel_max_draws_follow_the_softmax():
    """50,000 rows, one draw each from the same logits: each token's frequency is within
    4.5 standard errors of its probability (all five tokens at once)."""
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    probs = torch.softmax(logits, -1)
    rows = 50_000
    seeds = row_seeds(range(rows), 1)
    draws = (logits + gumbel_noise(seeds, 0, 5)).argmax(-1)
    freq = torch.bincount(draws, minlength=5).double() / rows
    se = (probs * (1 - probs) / rows).sqrt()
    assert ((freq - probs).abs() / se).max().item() < 4.5, (freq, probs)


def test_row_seeds_distinguish_samples_of_one_prompt():
    seeds = row_seeds([3, 3], 4)
    assert seeds.shape == (8,)
    assert len(set(seeds[:4].tolist())) == 4
    assert torch.equal(seeds[:4], seeds[4:])  # the same prompt seed: the same streams


def test_sampler_respects_top_k_and_temperature():
    scores = torch.tensor([[3.0, 2.9, -5.0, 1.0]]).repeat(400, 1)
    seeds = row_seeds(range(400), 1)
    picked = SeededSampler(seeds, 1.0, 1.0, 2)(None, scores.clone()).argmax(-1)
    assert set(picked.tolist()) == {0, 1}  # top-k 2 keeps the two largest
    cold = SeededSampler(seeds, 0.01, 1.0, 0)(None, scores.clone()).argmax(-1)
    assert (cold == 0).float().mean().item() > 0.99  # T -> 0 is greedy
