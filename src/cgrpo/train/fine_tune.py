"""The fine-tuning baselines of the paper's main table, as the rows of one step.

Each objective reuses the step's rollout (sample, verify, critique, refine) and keeps the
rows one cross-entropy step trains on (``algorithm.objective``; docs/baselines.md):

* ``raft`` (reward-ranked / rejection-sampling fine-tuning, online): the correct initial
  responses, under their prompt;
* ``refinement_ft``: the correct refinements, under the *original* question (as
  Critique-GRPO trains them: neither the critique nor the previous response is in the row);
* ``citl_ft`` (critique-in-the-loop fine-tuning): the correct initial responses and the
  correct refinements: one round of sample -> critique -> refine -> fine-tune per step;
* ``critique_ft``: the critic's critique of each critiqued response, under a prompt showing
  the question and that response (``algorithm.fine_tune.critique_template``); fallback
  critiques (the critic failed) are not learnt.

Every row is off-policy (``is_refinement``: no old log-prob) with advantage 1; the update
trains it with f(p) = log p and a token mean (:func:`fine_tune_loss`): the gradient of the
mean token cross-entropy over the step's rows, as the SFT warm-up takes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from cgrpo.algo.loss import LossConfig
from cgrpo.algo.mixing import TrainRow, cut_at_eos
from cgrpo.train.rollout import Record, Rollout
from cgrpo.types import Problem

TRAINS_ON = {
    "raft": ("initial",),
    "refinement_ft": ("refinement",),
    "citl_ft": ("initial", "refinement"),
}


def fine_tune_loss(loss: LossConfig) -> LossConfig:
    """The recipe's loss made a cross-entropy: f(p) = log p on every (off-policy) row,
    averaged over tokens, no clipping (no on-policy tokens); entropy and KL as set."""
    return dataclasses.replace(
        loss,
        shaping="log_p",
        aggregation="token_mean",
        clip_low=None,
        clip_high=None,
        tis_cap=None,
        demonstration_gamma=None,
    )


def fine_tune_rows(
    ro: Rollout,
    objective: str,
    eos_ids: list[int],
    prompt_ids: Callable[[Problem], list[int]],
    critique_row: Callable[[Record], tuple[list[int], list[int]] | None] | None = None,
) -> list[TrainRow]:
    """The step's training rows for ``objective``, each with advantage 1. Records trained
    on get their ``row`` (the others None), so samples.jsonl says what was learnt.

    ``prompt_ids(problem)``: the original prompt; ``critique_row(record)``: (prompt,
    target) ids of a critiqued initial record, or None when its prompt cannot fit."""
    for rec in ro.records:
        rec.row = None
    rows: list[TrainRow] = []
    if objective == "critique_ft":
        if critique_row is None:
            raise ValueError("critique_ft needs critique_row")
        for rec in ro.records:
            if rec.kind != "initial" or rec.critique is None or rec.critique.fallback:
                continue
            made = critique_row(rec)
            if made is not None:
                rows.append(TrainRow(rec.group, made[0], made[1], None, True, 0.0, 1.0))
        return rows
    if objective not in TRAINS_ON:
        raise ValueError(f"unknown fine-tuning objective {objective!r}")
    for rec in ro.records:
        if rec.kind in TRAINS_ON[objective] and rec.verdict.correct:
            ids, _ = cut_at_eos(rec.completion.token_ids, eos_ids)
            rec.row = len(rows)
            row = TrainRow(rec.group, prompt_ids(rec.problem), ids, None, True, rec.verdict.score)
            row.advantage = 1.0
            rows.append(row)
    return rows


def critique_target(tokenizer, text: str, max_new_tokens: int) -> list[int]:
    """A critique as a target: its tokens and EOS, cut to ``max_new_tokens``."""
    ids = [*tokenizer.encode(text, add_special_tokens=False), tokenizer.eos_token_id]
    return ids[:max_new_tokens]
