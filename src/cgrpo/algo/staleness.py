"""How old a pipelined rollout's rows are, and how far their sampler's log-probs are from
the trainer's (docs/pipeline.md).

A row's *staleness* is the trainer's weight version when it trains on the row minus the
oldest version that went into the row: its own sample's, and for a refinement also its
group's samples' (the refinement prompt holds one of them and its critique). Versions count
weight syncs: the weights a step samples with on-policy have the step's number.

The gap between the sampler's log-probs and the trainer's recomputed ones (the proximal
policy) has two causes that must not share a figure: the engine's own numerics (same
weights: rows of staleness 0) and the drift of the weights (rows sampled with older ones).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cgrpo.algo.mixing import TrainRow


def row_staleness(row: TrainRow, trainer_version: int) -> int:
    """Updates between the oldest weights in ``row`` and the trainer's (0: on-policy)."""
    versions = [v for v in (row.weight_version, row.group_weight_version) if v is not None]
    if not versions:
        raise ValueError("a row without a weight version cannot be checked for staleness")
    return trainer_version - min(versions)


def stale_groups(rows: Sequence[TrainRow], trainer_version: int, limit: int) -> set[int]:
    """Groups holding a row more than ``limit`` updates old: the whole group is dropped
    and resampled (its advantages are relative to its other members)."""
    return {r.group for r in rows if row_staleness(r, trainer_version) > limit}


def staleness_summary(rows: Sequence[TrainRow], trainer_version: int) -> dict[str, float]:
    """Mean and max staleness of the rows trained on this step."""
    ages = [row_staleness(r, trainer_version) for r in rows]
    if not ages:
        return {}
    return {"staleness_mean": sum(ages) / len(ages), "staleness_max": float(max(ages))}


def logprob_gaps(rows: Sequence[TrainRow], trainer_version: int) -> dict[str, float]:
    """|proximal - sampler| log-prob over the initial rows' tokens, split by cause:
    ``engine_*`` over rows sampled with the trainer's own weights (the engine's numerics),
    ``drift_*`` over rows sampled with older weights (the staleness drift, the engine's
    numerics included but far smaller). Rows need both log-probs (``old_logprobs:
    recompute`` keeps the sampler's in ``sampler_logprobs``); a side without rows is absent."""
    parts: dict[str, list[torch.Tensor]] = {"engine": [], "drift": []}
    for row in rows:
        if row.is_refinement or row.sampler_logprobs is None or row.old_logprobs is None:
            continue
        n = len(row.response_ids)
        proximal = torch.as_tensor(row.old_logprobs[:n], dtype=torch.float32)
        sampler = torch.as_tensor(row.sampler_logprobs[:n], dtype=torch.float32)
        side = "engine" if row_staleness(row, trainer_version) == 0 else "drift"
        parts[side].append((proximal - sampler).abs())
    out: dict[str, float] = {}
    for side, gaps in parts.items():
        if gaps and sum(len(g) for g in gaps):
            flat = torch.cat(gaps)
            out[f"{side}_mean"] = float(flat.mean())
            out[f"{side}_max"] = float(flat.max())
    return out
