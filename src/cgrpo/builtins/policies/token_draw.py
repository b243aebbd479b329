"""The hf backend's next-token draw: one uniform per row, the whole batch at once.

Inverse-transform sampling needs one uniform u per row: the first token whose cumulative
probability exceeds ``u x total``. transformers' ``multinomial`` draws one exponential per
vocabulary entry and row instead (64 rows of Qwen3's 151,936 entries: 54 against 304 ms
per draw on one CPU thread, measured for the first version of this module).

Precision, in two levels. The vocabulary is cut into blocks of :data:`BLOCK` entries; the
probabilities (float32, a softmax of float32 logits) are summed per block in float32, each
sum exact to float32 rounding relative to itself; the block is chosen on the float64
running sum of the block sums, and the token inside it on the float64 running sum of its
entries, with the same uniform (its remainder inside the chosen block, float64). Every
(B, V) pass is float32; float64 only touches (B, V / BLOCK) and (B, BLOCK) tensors. A
float32 running sum over the whole vocabulary would not do: near 1 it moves in steps of
6e-8, coarser than the probability of many of 151,936 tokens, whose mass would go to their
neighbours or vanish; here a token's interval is its own float32 probability. Measured
against a float64 inverse CDF over the whole vocabulary: benchmarks/token_draw_precision.py.

Uniforms are float64 with 53 random bits: torch's RNG (unseeded), or a counter-based hash
of (row seed, step) (:mod:`.seeded_sampling`), so a seeded row's draws depend on its seed
and its own probabilities only.
"""

from __future__ import annotations

from typing import Any

import torch

BLOCK = 1024


def sampling_warpers(temperature: float, top_p: float, top_k: int) -> list[Any]:
    """transformers' warpers for these settings, in the order its sampling applies them
    (each a few tensor ops on (B, V) scores: no host sync, no loop over rows)."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers: list[Any] = [TemperatureLogitsWarper(temperature)]
    if top_k > 0:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


def _block_sums(probs: torch.Tensor) -> torch.Tensor:
    """(B, ceil(V / BLOCK)) float32 sums of consecutive blocks of ``probs`` (B, V)."""
    b, v = probs.shape
    full = v - v % BLOCK
    parts = [probs[:, :full].reshape(b, -1, BLOCK).sum(-1)] if full else []
    if full < v:
        parts.append(probs[:, full:].sum(-1, keepdim=True))
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def _search(weights: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, running sum before it) of the first entry of each row of ``weights`` whose
    float64 running sum exceeds ``target`` (B,); entries of weight 0 are never chosen."""
    cdf = weights.cumsum(-1, dtype=torch.float64)
    index = torch.searchsorted(cdf, target.unsqueeze(-1), right=True).clamp_(max=cdf.shape[1] - 1)
    before = torch.where(index > 0, cdf.gather(-1, (index - 1).clamp(min=0)), 0.0)
    return index.squeeze(-1), before.squeeze(-1)


def inverse_cdf_draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """(B,) token ids drawn from ``probs`` (B, V), non-negative, not necessarily summing to
    1, with ``uniforms`` (B,) in [0, 1): the token whose interval holds ``u x total``."""
    probs = probs.float().contiguous()
    if probs.shape[1] <= BLOCK:  # one block: its float64 running sum directly
        token, _ = _search(probs, uniforms.to(torch.float64) * probs.sum(-1, dtype=torch.float64))
        return token
    sums = _block_sums(probs)
    total = sums.sum(-1, dtype=torch.float64)
    target = uniforms.to(torch.float64) * total
    block, before = _search(sums, target)
    # the uniform's remainder inside the chosen block, on that block's own running sum
    start = (block * BLOCK).unsqueeze(-1)
    cols = start + torch.arange(BLOCK, device=probs.device)
    inside = probs.gather(-1, cols.clamp(max=probs.shape[1] - 1))
    inside = inside.masked_fill(cols >= probs.shape[1], 0.0)
    mass = sums.gather(-1, block.unsqueeze(-1)).squeeze(-1).double()
    share = ((target - before) / mass).clamp(0.0, 1.0 - 2**-53)
    within = inside.sum(-1, dtype=torch.float64)
    token, _ = _search(inside, share * within)
    return (block * BLOCK + token).clamp_(max=probs.shape[1] - 1)


class TokenDraw:
    """One decode step's draw for a whole batch: the token of each row and its log-prob.

    The log-prob is log softmax(logits / T) of the drawn token, before top-k/top-p (the
    quantity the trainer recomputes). The draw follows the warped distribution (temperature,
    then top-k, top-p, as transformers samples). ``seeds`` (B,) int64: each row's uniforms
    from its own counter-based stream; None: torch's RNG on the logits' device. Greedy
    (``greedy=True``) takes the argmax of the raw logits. No Python loop over rows, no
    host synchronisation."""

    def __init__(
        self,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seeds: torch.Tensor | None = None,
        greedy: bool = False,
    ):
        self.temperature = 1.0 if greedy else temperature
        self.greedy = greedy
        self.warpers = sampling_warpers(temperature, top_p, top_k)[1:]  # T is applied below
        self.seeds = seeds

    def uniforms(self, rows: int, step: int, device: torch.device) -> torch.Tensor:
        if self.seeds is None:
            return torch.rand(rows, dtype=torch.float64, device=device)
        from cgrpo.builtins.policies.seeded_sampling import seeded_uniforms

        return seeded_uniforms(self.seeds, step)

    def __call__(self, logits: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``logits`` (B, V) of one step -> (tokens (B,) int64, log-probs (B,) float32)."""
        scores = logits.float()
        if self.temperature != 1.0:
            scores = scores / self.temperature
        logp = torch.log_softmax(scores, dim=-1)
        if self.greedy:
            token = scores.argmax(-1)
        else:  # without top-k/top-p the draw's probabilities are exp of the log-probs
            probs = torch.softmax(self._warp(scores), dim=-1) if self.warpers else logp.exp()
            token = inverse_cdf_draw(probs, self.uniforms(scores.shape[0], step, scores.device))
        return token, logp.gather(-1, token.unsqueeze(-1)).squeeze(-1)

    def _warp(self, scores: torch.Tensor) -> torch.Tensor:
        for warp in self.warpers:
            scores = warp(None, scores)
        return scores
