"""Seeded sampling that does not depend on the batch: each row draws from its own
counter-based random stream.

``run.reproducible_sampling`` promises that a prompt's samples depend on (seed, step,
prompt) only, not on which other prompts share its batch or its process. torch's global RNG
is one stream per device, so it cannot keep that promise for a batched draw. Here the
uniform of row i at decode step t is a pure function of (row seed_i, t): the t-th value of
a splitmix64 stream (Steele, Lea and Flood, 2014) started at the row's seed, computed for
the whole batch at once with int64 tensor ops (products wrap modulo 2^64 on CPU and CUDA
as the hash needs; right shifts are made logical by masking), on the device, without a
loop over rows and without a host synchronisation. Its top 53 bits make a float64 uniform
in [0, 1), which the inverse-CDF draw of :mod:`.token_draw` turns into the row's token.

A row's seed is itself a splitmix64 value of (prompt seed, sample index), so the samples
of one prompt draw from distinct streams. The same seeds give the same uniforms on any
device; the tokens can still differ between a CPU and a GPU through the logits.
"""

from __future__ import annotations

_MASK64 = (1 << 64) - 1


def _signed(x: int) -> int:
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


GOLDEN = _signed(0x9E3779B97F4A7C15)
_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)


def _shr(z, k: int):
    """Logical right shift of int64 ``z`` (torch's ``>>`` is arithmetic on signed ints)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def mix(z):
    """splitmix64's finaliser on an int64 tensor."""
    z = (z ^ _shr(z, 30)) * _M1
    z = (z ^ _shr(z, 27)) * _M2
    return z ^ _shr(z, 31)


def stream(seed, index):
    """The ``index``-th value (0-based) of the splitmix64 stream started at ``seed``;
    ``seed`` is an int64 tensor, ``index`` an int or an int64 tensor; they broadcast."""
    if isinstance(index, int):  # a Python product would not wrap: reduce it first
        return mix(seed + _signed((index + 1) * GOLDEN))
    return mix(seed + (index + 1) * GOLDEN)


def row_seeds(prompt_seeds, n: int):
    """(len(prompt_seeds) * n,) int64: sample j of prompt p gets stream(seed_p, j), rows in
    prompt-major order (the order ``generate`` returns)."""
    import torch

    seeds = torch.tensor(list(prompt_seeds), dtype=torch.long).repeat_interleave(n)
    return stream(seeds, torch.arange(n, dtype=torch.long).repeat(len(prompt_seeds)))


def seeded_uniforms(seeds, step: int):
    """(B,) float64 uniforms in [0, 1) for draw ``step`` of rows with ``seeds`` (B,) int64,
    on ``seeds``' device: 53 bits of stream(seeds[i], step), row i's alone."""
    import torch

    bits = _shr(stream(seeds, step), 11)  # the top 53 bits, as a non-negative int64
    return bits.to(torch.float64) * 2.0**-53
