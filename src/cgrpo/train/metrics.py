"""Run outputs a researcher reads: metrics.jsonl, samples.jsonl and the console display.

``metrics.jsonl`` has one JSON object per step with ``area/name`` keys; ``samples.jsonl``
one object per sequence (initial or refinement) with its verdict, critique, reward and
advantage. The console shows a rich live progress bar on a terminal and plain lines
otherwise (CI logs, ``nohup``): :mod:`cgrpo.train.console`, imported here too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from cgrpo.train.console import Console, ConsoleLogHandler, step_alerts
from cgrpo.train.rollout import Rollout
from cgrpo.types import BUDGET_EXHAUSTED

__all__ = [
    "Console", "ConsoleLogHandler", "JsonlWriter", "critique_metrics", "per_task_metrics",
    "rollout_metrics", "sample_lines", "step_alerts",
]  # fmt: skip


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def per_task_metrics(init: list[Any], refs: list[Any]) -> dict[str, float]:
    """For problems labelled by source (``metadata["task"]``: a mixture's labels, a file
    task's ``source_field`` such as verl's ``data_source``): each source's initial reward,
    group pass rate and refinement success, under ``reward/<label>/...``,
    ``refine/<label>/...`` (a source absent from a step's batch logs nothing that step)."""
    out: dict[str, float] = {}
    labels = sorted({r.problem.metadata.get("task") for r in init} - {None})
    for label in labels:
        mine = [r for r in init if r.problem.metadata.get("task") == label]
        groups: dict[int, list[bool]] = {}
        for r in mine:
            groups.setdefault(r.group, []).append(r.verdict.correct)
        out[f"reward/{label}/initial_mean"] = _mean([r.verdict.score for r in mine])
        out[f"reward/{label}/group_pass_rate"] = _mean([float(any(g)) for g in groups.values()])
        refined = [r for r in refs if r.problem.metadata.get("task") == label]
        if refined:
            out[f"refine/{label}/success_rate"] = _mean([float(r.verdict.correct) for r in refined])
    return out


def rollout_metrics(ro: Rollout, advantages: bool = True) -> dict[str, float]:
    """The per-step rollout metrics (ALGORITHM.md section 6). ``advantages=False``: the
    rows are a fine-tuning objective's (advantage 1 each), no advantage is logged."""
    init = [r for r in ro.records if r.kind == "initial"]
    refs = [r for r in ro.records if r.kind == "refinement"]
    demos = [r for r in ro.records if r.kind == "demonstration"]
    kept = [r for r in refs if r.kept]
    groups = len({r.group for r in init})
    m: dict[str, float] = {
        "reward/initial_mean": _mean([r.verdict.score for r in init]),
        "reward/group_pass_rate": _mean(
            [float(any(r.verdict.correct for r in init if r.group == g)) for g in range(groups)]
        ),
        "groups/all_failed_share": ro.groups_all_failed / max(1, groups),
        # only where refinements could rescue (plain GRPO has none: not a share of 0)
        "groups/rescued_share": (
            ro.groups_rescued / ro.groups_all_failed
            if ro.groups_all_failed and (refs or ro.refinements_skipped)
            else float("nan")
        ),
        "refine/generated": float(len(refs)),
        "refine/skipped_too_long": float(ro.refinements_skipped),
        "refine/success_rate": _mean([float(r.verdict.correct) for r in refs]),
        "refine/kept": float(len(kept)),
        "reward/refinement_kept_mean": _mean([r.verdict.score for r in kept]),
        "length/initial_mean": _mean([float(len(r.completion.token_ids)) for r in init]),
        "length/refinement_mean": _mean([float(len(r.completion.token_ids)) for r in refs]),
        # the prompts the sampler prefilled: a refinement prompt holds the question, the
        # previous response and its critique, so it is what makes refining dearer per
        # sequence than sampling
        "length/prompt_mean": _mean([float(r.prompt_tokens) for r in init]),
        "length/refinement_prompt_mean": _mean([float(r.prompt_tokens) for r in refs]),
        "length/initial_truncated_share": _mean(
            [float(r.completion.finish_reason == "length") for r in init]
        ),
        "verify/no_answer_share": _mean([float(r.verdict.reason == "no_answer") for r in init]),
        "verify/timeouts": float(sum(r.verdict.reason == "timeout" for r in ro.records)),
        "verify/errors": float(sum(r.verdict.raised for r in ro.records)),
        "verify/nonfinite_rewards": float(
            sum(not math.isfinite(r.verdict.score) for r in ro.records)
        ),
    }
    m.update(kind_metrics(ro, init, refs, demos))
    m.update(per_task_metrics(init, refs))
    m.update(critique_metrics(ro.critiques))
    by_source = {
        "critic": [r for r in refs if r.critique and not r.critique.fallback],
        "fallback": [r for r in refs if r.critique and r.critique.fallback],
    }
    for source, recs in by_source.items():
        if recs:
            m[f"refine/success_rate_{source}"] = _mean([float(r.verdict.correct) for r in recs])
    by_group: dict[int, list[float]] = {}
    for row in ro.rows if advantages else ():
        by_group.setdefault(row.group, []).append(row.advantage)
    flat = [a for vals in by_group.values() for a in vals]
    if flat:
        m["advantage/mean"] = _mean(flat)
        mean = sum(flat) / len(flat)  # plain arithmetic: NaN advantages must not crash logging
        m["advantage/std"] = math.sqrt(sum((a - mean) ** 2 for a in flat) / len(flat))
        m["advantage/max"] = max(flat)
        m["advantage/min"] = min(flat)
        m["advantage/zero_groups_share"] = _mean(
            [float(all(a == 0 for a in vals)) for vals in by_group.values()]
        )
    for stage, secs in ro.seconds.items():
        m[f"time/{stage}"] = secs
    for key, value in ro.speculative.items():  # rollout.speculative_refinement's cost
        m[f"speculative/{key}"] = value
    return {k: v for k, v in m.items() if not (isinstance(v, float) and math.isnan(v))}


def kind_metrics(ro: Rollout, init: list, refs: list, demos: list) -> dict[str, float]:
    """Demonstrations (LUFFY) beside initial responses and refinements, and the paper's
    persistent-failure shares beside ``refine/success_rate`` (the correct refinements):
    of the critiques, those the critic wrote (not a fallback); of the groups, those with a
    refinement (empty when the step has none of them)."""
    m: dict[str, float] = {}
    if demos:
        m["demonstration/count"] = float(len(demos))
        m["reward/demonstration_mean"] = _mean([r.verdict.score for r in demos])
        m["length/demonstration_mean"] = _mean([float(len(r.completion.token_ids)) for r in demos])
    critiqued = [r.critique for r in init if r.critique is not None]
    if critiqued:
        m["critique/valid_share"] = _mean([float(not c.fallback) for c in critiqued])
        groups = {r.group for r in init}
        m["groups/refined_share"] = len({r.group for r in refs}) / max(1, len(groups))
    return m


def critique_metrics(crits: list) -> dict[str, float]:
    """Telemetry of one step's critiques (empty when nothing was critiqued)."""
    if not crits:
        return {}
    with_verdict = [c for c in crits if c.critic_verdict is not None]
    # the same things the API critic's critique/failures_total counts: requests that gave
    # up (budget refusals are counted apart, as critique/budget_fallbacks)
    over_budget = [c for c in crits if c.fallback and c.error == BUDGET_EXHAUSTED]
    failed = [
        c for c in crits if c.fallback and c.error not in (None, "disagreement", BUDGET_EXHAUSTED)
    ]
    m = {
        "critique/requested": float(len(crits)),
        "critique/cached": float(sum(c.cached for c in crits)),
        "critique/fallbacks": float(sum(c.fallback for c in crits)),
        "critique/failed": float(len(failed)),
        "critique/budget_fallbacks": float(len(over_budget)),
        "critique/disagreements": float(sum(c.error == "disagreement" for c in crits)),
        "critique/verdict_missing": float(len(crits) - len(with_verdict)),
        "critique/length_chars_mean": _mean([float(len(c.text)) for c in crits]),
        "critique/latency_s_mean": _mean([c.latency_s for c in crits if not c.cached]),
        # summed request latency: against time/critique (wall) it shows the concurrency
        # at work, and whether the critic is the step's bottleneck
        "critique/latency_s_sum": float(sum(c.latency_s for c in crits if not c.cached)),
        "critique/prompt_tokens": float(sum(c.prompt_tokens for c in crits)),
        "critique/completion_tokens": float(sum(c.completion_tokens for c in crits)),
        "critique/cost": float(sum(c.cost for c in crits)),
    }
    if with_verdict:
        m["critique/verdict_agreement"] = 1.0 - m["critique/disagreements"] / len(with_verdict)
    return m


# Characters json.dumps(ensure_ascii=False) leaves raw that str.splitlines() (and so many
# JSONL readers) takes for line ends; a sampled response can hold any of them.
_LINE_BREAKS = str.maketrans({c: f"\\u{ord(c):04x}" for c in "\x85\u2028\u2029"})


class JsonlWriter:
    """Appends JSON lines and flushes each one (a killed run keeps every finished line).
    Text stays readable (non-ASCII kept) except the few characters that some readers split
    lines on, which are written as \\u escapes: one record is always one line."""

    def __init__(self, path: Path):
        self.path = path
        self._fh = path.open("a", encoding="utf-8")

    def write(self, obj: dict[str, Any]) -> None:
        self._fh.write(json.dumps(obj, ensure_ascii=False).translate(_LINE_BREAKS) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def _group_versions(ro: Rollout) -> dict[int, int]:
    """Each group's oldest weight version among its initial samples."""
    out: dict[int, int] = {}
    for r in ro.records:
        v = r.completion.weight_version
        if r.kind == "initial" and v is not None:
            out[r.group] = min(out.get(r.group, v), v)
    return out


def sample_lines(step: int, ro: Rollout, limit: int) -> list[dict[str, Any]]:
    """samples.jsonl entries of a step (at most ``limit``, refinements first). ``kind`` is
    ``initial``, ``refinement`` or ``demonstration`` (a reference solution in the group).

    ``id`` is ``"STEP-N"`` (unique in the run); a refinement's ``parent_id`` is the id of
    the response it refined, whose line holds the critique that prompted it."""
    lines = []
    group_versions = _group_versions(ro)
    for index, rec in enumerate(ro.records):
        crit = rec.critique
        lines.append(
            {
                "step": step,
                "id": f"{step}-{index}",
                "parent_id": None if rec.parent is None else f"{step}-{rec.parent}",
                "prompt_id": rec.problem.id,
                "group": rec.group,
                "kind": rec.kind,
                "trained": rec.row is not None,
                "question": rec.problem.question,
                "answer": rec.problem.answer,
                "response": rec.completion.text,
                "finish_reason": rec.completion.finish_reason,
                "extracted": rec.verdict.extracted,
                "verdict": rec.verdict.reason
                or ("correct" if rec.verdict.correct else "incorrect"),
                "reward": rec.verdict.score,
                "advantage": ro.rows[rec.row].advantage if rec.row is not None else None,
                "critique": crit.text if crit else None,
                "critic": crit.critic if crit else None,
                "critique_fallback": crit.fallback if crit else None,
                "weight_version": rec.completion.weight_version,
                # a refinement's group's samples' (its prompt holds one and its critique)
                "group_weight_version": group_versions.get(rec.group),
            }
        )
    parents = {line["parent_id"] for line in lines if line["parent_id"] is not None}

    def order(line: dict[str, Any]) -> tuple[int, int]:  # refinements, what they refined, rest
        rank = 0 if line["kind"] == "refinement" else 1 if line["id"] in parents else 2
        return rank, line["group"]

    lines.sort(key=order)
    return lines[:limit]
