"""Padding-free micro-batches: the rows of a micro-batch as one sequence of real tokens.

A padded micro-batch is rows x (longest prompt + longest response) positions; with
long-tailed response lengths most of them can be padding. A packed micro-batch holds only
real tokens, in segments:

* each distinct prompt of the micro-batch once (its positions 0 .. p-1), then
* each row's response (positions p .. p+r-1), attending to its prompt's segment and to
  itself, causally.

A group's G + K rows share one prompt (refinements are trained on the original prompt),
so packing a group's rows together computes its prompt once, forward and backward, like
the padded path's prompt-once cache (:func:`cgrpo.model.logprobs._shared_prompt_hidden`).
Rows are never split. Response token t of a row is predicted by the hidden state at its
prompt's last position (t = 0) or at its own position t-1.

This module plans and builds the tensors (plain data, no model); the attention that
keeps each segment to its own keys is :mod:`cgrpo.model.packing`. The response side (the
(B, T) tensors the loss reads) is the padded path's, so every loss term is computed on the
same tensors either way.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from cgrpo.algo.mixing import ResponseTensors, TrainRow, response_tensors


def plan_packs(rows: Sequence[tuple[Hashable, int, int]], budget: int) -> list[list[int]]:
    """Row indices of each packed micro-batch.

    ``rows`` holds each row's (prompt key, prompt length, response length). Rows are taken
    grouped by prompt (in order of first appearance) and added to the current micro-batch
    while its tokens stay within ``budget``: a row costs its response, plus its prompt when
    the micro-batch does not hold that prompt yet. A row over the budget on its own gets a
    micro-batch of its own (validation keeps the budget >= model.max_length)."""
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    order: dict[Hashable, list[int]] = {}
    for i, (key, _, _) in enumerate(rows):
        order.setdefault(key, []).append(i)
    plan: list[list[int]] = []
    current: list[int] = []
    prompts: set[Hashable] = set()
    used = 0
    for key, members in order.items():
        for i in members:
            _, p, r = rows[i]
            cost = r if key in prompts else p + r
            if current and used + cost > budget:
                plan.append(current)
                current, prompts, used, cost = [], set(), 0, p + r
            current.append(i)
            prompts.add(key)
            used += cost
    if current:
        plan.append(current)
    return plan


@dataclass
class PackedBatch(ResponseTensors):
    """A packed micro-batch: N real tokens in S segments, and the response side of its B
    rows (see :class:`ResponseTensors`).

    ``input_ids`` / ``position_ids``: (N,). Segment s queries tokens
    ``q_bounds[s] = (start, end)`` and attends, causally aligned at the end, to the tokens
    ``kv_index[k_bounds[s][0] : k_bounds[s][1]]`` (its prompt's, then its own).
    ``predict_index`` (n,): the position whose hidden state predicts each real response
    token, in row order (the order of ``response_mask``'s ones)."""

    input_ids: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    kv_index: torch.Tensor | None = None
    q_bounds: tuple[tuple[int, int], ...] = ()
    k_bounds: tuple[tuple[int, int], ...] = ()
    predict_index: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    @property
    def token_counts(self) -> tuple[int, int]:
        """(real tokens, positions the body processes): equal, there is no padding."""
        n = self.input_ids.shape[0]
        return n, n


def _arange(start: int, end: int) -> torch.Tensor:
    return torch.arange(start, end, dtype=torch.long)


def collate_packed(rows: Sequence[TrainRow], pad_id: int) -> PackedBatch:
    """Pack ``rows`` into one :class:`PackedBatch` (each distinct prompt once)."""
    if not rows:
        raise ValueError("cannot pack an empty list of rows")
    ids: list[torch.Tensor] = []
    pos: list[torch.Tensor] = []
    kv: list[torch.Tensor] = []
    predict: list[torch.Tensor] = []
    q_bounds: list[tuple[int, int]] = []
    k_bounds: list[tuple[int, int]] = []
    prompt_at: dict[tuple[int, ...], tuple[int, int]] = {}
    n = m = 0  # tokens so far; gathered keys so far

    def segment(tokens: Sequence[int], first: int, keys: list[torch.Tensor]) -> int:
        nonlocal n, m
        start, count = n, len(tokens)
        ids.append(torch.as_tensor(tokens, dtype=torch.long))
        pos.append(_arange(first, first + count))
        keys = [*keys, _arange(start, start + count)]
        kv.extend(keys)
        width = sum(k.numel() for k in keys)
        q_bounds.append((start, start + count))
        k_bounds.append((m, m + width))
        n, m = n + count, m + width
        return start

    for row in rows:
        key = tuple(row.prompt_ids)
        if not key:
            raise ValueError("a packed row needs a prompt: its first token is predicted by it")
        if key not in prompt_at:
            prompt_at[key] = (segment(key, 0, []), len(key))
        start, p = prompt_at[key]
        r = len(row.response_ids)
        if r:
            s = segment(row.response_ids, p, [_arange(start, start + p)])
            predict += [torch.tensor([start + p - 1]), _arange(s, s + r - 1)]
    resp = response_tensors(rows, pad_id)
    return PackedBatch(
        **vars(resp),
        input_ids=torch.cat(ids),
        position_ids=torch.cat(pos),
        kv_index=torch.cat(kv),
        q_bounds=tuple(q_bounds),
        k_bounds=tuple(k_bounds),
        predict_index=torch.cat(predict) if predict else torch.zeros(0, dtype=torch.long),
    )
