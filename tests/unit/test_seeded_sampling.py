"""Counter-based seeded sampling (cgrpo.builtins.policies.seeded_sampling): the hash is
splitmix64, each row's uniform is a function of (its seed, the step) only, and a decode
step makes the same calls whatever the batch size (no loop over rows, no host sync)."""

import pytest
import torch
from torch.overrides import TorchFunctionMode

from cgrpo.builtins.policies.decode import decode
from cgrpo.builtins.policies.seeded_sampling import row_seeds, seeded_uniforms, stream
from cgrpo.builtins.policies.token_draw import TokenDraw

MASK64 = (1 << 64) - 1


def splitmix64_reference(seed: int, count: int) -> list[int]:
    """The published splitmix64 generator in plain Python integers (unsigned 64-bit)."""
    out, state = [], seed & MASK64
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        out.append(z ^ (z >> 31))
    return out


@pytest.mark.parametrize("seed", [0, 1234567, -5, 2**62 + 17])
def test_stream_is_splitmix64(seed):
    expected = splitmix64_reference(seed, 6)
    got = stream(torch.tensor([seed]), torch.arange(6)).tolist()
    assert [g & MASK64 for g in got] == expected
    assert [stream(torch.tensor([seed]), i).item() & MASK64 for i in range(6)] == expected


def test_splitmix64_known_values():
    """Seed 0's first value, as printed by the reference C implementation."""
    assert splitmix64_reference(0, 1)[0] == 0xE220A8397B1DCDAF


def test_uniform_is_the_top_53_bits_of_the_stream_value():
    # step 0 of seed 0: 0xE220A8397B1DCDAF >> 11, over 2^53
    expected = (0xE220A8397B1DCDAF >> 11) / 2**53
    assert seeded_uniforms(torch.tensor([0]), 0).item() == expected
    third = splitmix64_reference(7, 3)[2] >> 11
    assert seeded_uniforms(torch.tensor([7]), 2).item() == third / 2**53


def test_uniforms_are_a_function_of_seed_and_step_only():
    seeds = torch.tensor([7, 8, 9])
    full = seeded_uniforms(seeds, 4)
    assert full.dtype == torch.float64
    assert torch.equal(seeded_uniforms(seeds[1:2], 4), full[1:2])
    assert torch.equal(seeded_uniforms(torch.tensor([9, 7]), 4), full[[2, 0]])
    assert not torch.equal(seeded_uniforms(seeds, 5), full)
    state = torch.random.get_rng_state()
    seeded_uniforms(seeds, 6)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched


def test_uniforms_are_uniform_with_53_bits():
    u = seeded_uniforms(row_seeds(range(20_000), 1), 3)
    assert u.min().item() >= 0.0 and u.max().item() < 1.0
    assert u.mean().item() == pytest.approx(0.5, abs=0.01)
    assert u.var().item() == pytest.approx(1 / 12, rel=0.03)
    assert ((u * 2**24) % 1 != 0).float().mean().item() > 0.99  # finer than float32's 24


def test_seeded_draws_follow_the_softmax():
    """50,000 rows, one draw each from the same logits: each token's frequency is within
    4.5 standard errors of its probability."""
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    probs = torch.softmax(logits, -1)
    rows = 50_000
    draws, _ = TokenDraw(seeds=row_seeds(range(rows), 1))(logits.repeat(rows, 1), step=0)
    freq = torch.bincount(draws, minlength=5).double() / rows
    se = (probs * (1 - probs) / rows).sqrt()
    assert ((freq - probs).abs() / se).max().item() < 4.5, (freq, probs)


def test_row_seeds_distinguish_samples_of_one_prompt():
    seeds = row_seeds([3, 3], 4)
    assert seeds.shape == (8,)
    assert len(set(seeds[:4].tolist())) == 4
    assert torch.equal(seeds[:4], seeds[4:])  # the same prompt seed: the same streams


class CallCounter(TorchFunctionMode):
    """Counts every torch function and tensor method called, and the host reads among
    them (``item``, ``tolist``, ``bool()``, ...)."""

    SYNCS = frozenset({"item", "tolist", "__bool__", "__int__", "__float__", "numpy"})

    def __init__(self):
        super().__init__()
        self.calls, self.syncs = 0, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        self.syncs += getattr(func, "__name__", "") in self.SYNCS
        return func(*args, **(kwargs or {}))


def _counted(fn):
    with CallCounter() as counter:
        fn()
    return counter


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_a_draw_makes_the_same_calls_for_1_or_256_rows_and_reads_nothing(top_p):
    """No Python loop over rows (the old sampler seeded a generator per row and step) and
    no host synchronisation: the number of torch calls does not grow with the batch."""
    counts = []
    for rows in (1, 256):
        draw = TokenDraw(0.8, top_p, 0, seeds=row_seeds(range(rows), 1))
        logits = torch.randn(rows, 3000)
        counts.append(_counted(lambda d=draw, x=logits: d(x, step=5)))
    assert counts[0].calls == counts[1].calls
    assert counts[0].syncs == counts[1].syncs == 0


def test_decode_reads_the_device_only_at_its_stop_checks(tiny):
    """16 new tokens (a prefill and 15 decode steps), the stop checked every 8 steps: the
    same calls at batch 2 and 16, and two host reads in all: the one check (the last step
    ends the loop without asking) and one in transformers' mask for the prefill. Every
    step's mask is handed over ready, so the model's forward reads nothing back."""
    model, _ = tiny
    counts = []
    for rows in (2, 16):
        ids = torch.randint(5, 300, (rows, 6))
        mask = torch.ones_like(ids)
        draw = TokenDraw(seeds=row_seeds(range(rows), 1))

        def run(ids=ids, mask=mask, draw=draw):
            with torch.inference_mode():
                decode(model, ids, mask, 16, draw, [10_000], 0, check_every=8)

        counts.append(_counted(run))
    assert counts[0].calls == counts[1].calls
    assert counts[0].syncs == counts[1].syncs == 2
    with CallCounter() as every, torch.inference_mode():  # checked every step: 15 checks
        decode(model, ids, mask, 16, TokenDraw(), [10_000], 0, check_every=1)
    assert every.syncs == 16


def test_a_seeded_draw_is_pinned_to_its_stream():
    """The seeded stream is a contract: these tokens are what cgrpo draws for these seeds,
    and a change that moves them breaks every seeded run's reproducibility (this stream
    replaced the per-row torch generators; docs/performance.md says what changed).
    Probabilities (0.1, 0.2, 0.3, 0.4), cumulative (0.1, 0.3, 0.6, 1.0). The uniforms
    (top 53 bits of the splitmix64 values over 2^53) of steps 0, 1, 2: seed 0 0.8833,
    0.4315, 0.0264 -> tokens 3, 2, 0; seed 7 0.3898, 0.0168, 0.9008 -> tokens 2, 0, 3."""
    uniforms = [[(v >> 11) / 2**53 for v in splitmix64_reference(s, 3)] for s in (0, 7)]
    assert uniforms == [pytest.approx([0.8833, 0.4315, 0.0264], abs=1e-4),
                        pytest.approx([0.3898, 0.0168, 0.9008], abs=1e-4)]  # fmt: skip
    logits = torch.tensor([0.1, 0.2, 0.3, 0.4]).log().repeat(2, 1)
    draw = TokenDraw(seeds=torch.tensor([0, 7]))
    tokens = [draw(logits, step=step)[0].tolist() for step in range(3)]
    assert tokens == [[3, 2], [2, 0], [0, 3]]
