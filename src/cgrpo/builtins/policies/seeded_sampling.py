"""Seeded sampling that does not depend on the batch: each row draws from its own
counter-based random stream.

``run.reproducible_sampling`` promises that a prompt's samples depend on (seed, step,
prompt) only, not on which other prompts share its batch or its process. torch's RNG is one
stream per device, so the hf backend used to keep that promise by generating every prompt
alone under a re-seeded RNG: one ``generate`` call per prompt, and one per refinement. This
module draws instead with the Gumbel-max trick, ``argmax(log p + g)`` with
``g = -log(-log u)``, where each ``u`` is a pure function of (row seed, step, token id):
a splitmix64 hash computed with int64 tensor ops. Every row of any batch, on any device,
gets the same noise, so the whole step is one batched call again and the global RNG is
never touched.

The hash is splitmix64 (Steele, Lea and Flood, 2014): stream(seed, i) = mix(seed + (i + 1)
x golden). int64 products wrap modulo 2^64 on CPU and CUDA, which is what the hash needs;
right shifts are made logical by masking. The uniform has 24 bits, exact in float32, so the
Gumbel tails are cut at about 17.3: a token whose noise would exceed that is affected with
probability below 1e-7 per draw.
"""

from __future__ import annotations

from typing import Any

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


def gumbel_noise(seeds, step: int, vocab: int):
    """(B, vocab) float32 standard Gumbel noise for draw ``step`` of rows with ``seeds``
    (B,), on ``seeds``' device; a pure function of (seed, step, token id)."""
    import torch

    keys = stream(seeds, step).unsqueeze(1)  # (B, 1): one key per row and step
    tokens = torch.arange(vocab, dtype=torch.long, device=seeds.device)
    bits = _shr(stream(keys, tokens), 40)  # the top 24 bits
    u = (bits.to(torch.float32) + 0.5) * (1.0 / (1 << 24))  # in (0, 1), never 0 or 1
    return -torch.log(-torch.log(u))


class SeededSampler:
    """The last transformers logits processor of a greedy ``generate``: it applies the
    sampling warpers (temperature, top-k, top-p, the order transformers samples with) and
    adds each row's Gumbel noise, so generate's argmax is a draw from the warped
    distribution with that row's stream. Draw t of a row uses the noise of step t, however
    long its prompt and whatever else is in the batch.
    """

    def __init__(self, seeds, temperature: float, top_p: float, top_k: int):
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        self.seeds = seeds  # (B,) int64, on the model's device
        self.warpers: list[Any] = [TemperatureLogitsWarper(temperature)]
        if top_k > 0:
            self.warpers.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))
        self.step = 0

    def __call__(self, input_ids, scores):
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        noise = gumbel_noise(self.seeds, self.step, scores.shape[-1])
        self.step += 1
        return scores.float() + noise  # -inf (filtered tokens) stays -inf
