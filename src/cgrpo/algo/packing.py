"""Padding-free micro-batches: the rows of a micro-batch as one sequence of real tokens.

A padded micro-batch is rows x (longest prompt + longest response) positions; with
long-tailed response lengths most of them can be padding. A packed micro-batch holds only
real tokens, in segments:

* each prompt that several rows of the micro-batch share once (its positions 0 .. p-1),
  then each of their responses (positions p .. p+r-1), attending to the prompt's segment
  and to itself, causally;
* a prompt with one row, and that row's response, as one sequence (positions 0 .. p+r-1).

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

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from cgrpo.algo.mixing import ResponseTensors, TrainRow, long_tensor, response_tensors


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


class _Segments:
    """The growing token sequence of a packed micro-batch and its attention segments."""

    def __init__(self) -> None:
        self.ids: list[torch.Tensor] = []
        self.positions: list[torch.Tensor] = []
        self.keys: list[torch.Tensor] = []
        self.predict: list[torch.Tensor] = []
        self.q_bounds: list[tuple[int, int]] = []
        self.k_bounds: list[tuple[int, int]] = []
        self.tokens = self.gathered = 0

    def add(self, tokens: Sequence[int], first: int, prompt: tuple[int, int] | None) -> int:
        """Append ``tokens`` at positions ``first``, ``first + 1``, ...; they attend to
        ``prompt`` = (start, length) if given, then to themselves. Returns their start."""
        start, count = self.tokens, len(tokens)
        self.ids.append(long_tensor(tokens))
        self.positions.append(_arange(first, first + count))
        keys = [_arange(prompt[0], prompt[0] + prompt[1])] if prompt else []
        keys.append(_arange(start, start + count))
        self.keys += keys
        width = sum(k.numel() for k in keys)
        self.q_bounds.append((start, start + count))
        self.k_bounds.append((self.gathered, self.gathered + width))
        self.tokens, self.gathered = start + count, self.gathered + width
        return start


def collate_packed(rows: Sequence[TrainRow], pad_id: int) -> PackedBatch:
    """Pack ``rows`` into one :class:`PackedBatch`: a prompt that several rows share is one
    segment their responses attend to; a prompt with one row is one segment with it."""
    if not rows or not all(r.prompt_ids for r in rows):
        raise ValueError("a packed row needs a prompt: its first token is predicted by it")
    uses = Counter(tuple(r.prompt_ids) for r in rows if r.response_ids)
    seg = _Segments()
    prompt_at: dict[tuple[int, ...], int] = {}
    for row in rows:
        key, r = tuple(row.prompt_ids), len(row.response_ids)
        p = len(key)
        if uses[key] == 1 and r:  # the prompt's only row: one sequence, its own keys
            s = seg.add([*key, *row.response_ids], 0, None)
            seg.predict.append(_arange(s + p - 1, s + p + r - 1))
        elif r:
            if key not in prompt_at:
                prompt_at[key] = seg.add(key, 0, None)
            start = prompt_at[key]
            s = seg.add(row.response_ids, p, (start, p))
            seg.predict += [torch.tensor([start + p - 1]), _arange(s, s + r - 1)]
    if not seg.ids:  # no row has a response token: the forward still runs (FSDP), on a prompt
        seg.add(rows[0].prompt_ids, 0, None)
    return PackedBatch(
        **vars(response_tensors(rows, pad_id)),
        input_ids=torch.cat(seg.ids),
        position_ids=torch.cat(seg.positions),
        kv_index=torch.cat(seg.keys),
        q_bounds=tuple(seg.q_bounds),
        k_bounds=tuple(seg.k_bounds),
        predict_index=torch.cat(seg.predict) if seg.predict else _arange(0, 0),
    )
