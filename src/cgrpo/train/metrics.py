"""Run outputs a researcher reads: metrics.jsonl, samples.jsonl and the console display.

``metrics.jsonl`` has one JSON object per step with ``area/name`` keys; ``samples.jsonl``
one object per sequence (initial or refinement) with its verdict, critique, reward and
advantage. The console shows a rich live progress bar on a terminal and plain lines
otherwise (CI logs, ``nohup``).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from cgrpo.train.rollout import Rollout
from cgrpo.types import BUDGET_EXHAUSTED

log = logging.getLogger("cgrpo.console")


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


def rollout_metrics(ro: Rollout) -> dict[str, float]:
    """The per-step rollout metrics (ALGORITHM.md section 6)."""
    init = [r for r in ro.records if r.kind == "initial"]
    refs = [r for r in ro.records if r.kind == "refinement"]
    kept = [r for r in refs if r.kept]
    groups = len({r.group for r in init})
    m: dict[str, float] = {
        "reward/initial_mean": _mean([r.verdict.score for r in init]),
        "reward/group_pass_rate": _mean(
            [float(any(r.verdict.correct for r in init if r.group == g)) for g in range(groups)]
        ),
        "groups/all_failed_share": ro.groups_all_failed / max(1, groups),
        "groups/rescued_share": (
            ro.groups_rescued / ro.groups_all_failed if ro.groups_all_failed else float("nan")
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
        "verify/nonfinite_rewards": float(
            sum(not math.isfinite(r.verdict.score) for r in ro.records)
        ),
    }
    m.update(per_task_metrics(init, refs))
    m.update(critique_metrics(ro.critiques))
    by_source = {
        "critic": [r for r in refs if r.critique and not r.critique.fallback],
        "fallback": [r for r in refs if r.critique and r.critique.fallback],
    }
    for source, recs in by_source.items():
        if recs:
            m[f"refine/success_rate_{source}"] = _mean([float(r.verdict.correct) for r in recs])
    advantages: dict[int, list[float]] = {}
    for row in ro.rows:
        advantages.setdefault(row.group, []).append(row.advantage)
    flat = [a for vals in advantages.values() for a in vals]
    if flat:
        m["advantage/mean"] = _mean(flat)
        mean = sum(flat) / len(flat)  # plain arithmetic: NaN advantages must not crash logging
        m["advantage/std"] = math.sqrt(sum((a - mean) ** 2 for a in flat) / len(flat))
        m["advantage/max"] = max(flat)
        m["advantage/min"] = min(flat)
        m["advantage/zero_groups_share"] = _mean(
            [float(all(a == 0 for a in vals)) for vals in advantages.values()]
        )
    for stage, secs in ro.seconds.items():
        m[f"time/{stage}"] = secs
    for key, value in ro.speculative.items():  # rollout.speculative_refinement's cost
        m[f"speculative/{key}"] = value
    return {k: v for k, v in m.items() if not (isinstance(v, float) and math.isnan(v))}


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


class JsonlWriter:
    """Appends JSON lines and flushes each one (a killed run keeps every finished line)."""

    def __init__(self, path: Path):
        self.path = path
        self._fh = path.open("a", encoding="utf-8")

    def write(self, obj: dict[str, Any]) -> None:
        self._fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def sample_lines(step: int, ro: Rollout, limit: int) -> list[dict[str, Any]]:
    """samples.jsonl entries of a step (at most ``limit``, refinements first).

    ``id`` is ``"STEP-N"`` (unique in the run); a refinement's ``parent_id`` is the id of
    the response it refined, whose line holds the critique that prompted it."""
    lines = []
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
            }
        )
    parents = {line["parent_id"] for line in lines if line["parent_id"] is not None}

    def order(line: dict[str, Any]) -> tuple[int, int]:  # refinements, what they refined, rest
        rank = 0 if line["kind"] == "refinement" else 1 if line["id"] in parents else 2
        return rank, line["group"]

    lines.sort(key=order)
    return lines[:limit]


# a sampler/trainer log-prob difference above these is not bf16 rounding (~1e-2 mean)
MISMATCH_MEAN_ALERT, MISMATCH_MAX_ALERT = 0.05, 1.0


def step_alerts(
    metrics: dict[str, float], spent_usd: float = 0.0, budget_usd: float | None = None
) -> list[str]:
    """What is off in a step, in words: the console shows these beside the numbers."""
    out = []
    if metrics.get("update/skipped_nonfinite", 0) > 0:
        out.append("non-finite loss or gradients: the update was skipped")
    mean, worst = metrics.get("sampler/logprob_diff_mean"), metrics.get("sampler/logprob_diff_max")
    if (mean is not None and mean > MISMATCH_MEAN_ALERT) or (
        worst is not None and worst > MISMATCH_MAX_ALERT
    ):
        out.append(f"sampler and trainer log-probs differ (mean {mean or 0:.3f}, max "
                   f"{worst or 0:.3f}): more than precision; check the weight sync")  # fmt: skip
    if metrics.get("critique/failed", 0) > 0:
        out.append(f"{metrics['critique/failed']:.0f} critiques failed (ground-truth fallback)")
    if budget_usd and spent_usd >= 0.9 * budget_usd:
        out.append(f"critic spend ${spent_usd:.4f} is at {spent_usd / budget_usd:.0%} of "
                   f"budget_usd ${budget_usd:.4f}")  # fmt: skip
    return out


class Console:
    """Live progress: on a terminal (or when forced) one rich view refreshed per step
    (progress bar and ETA, the step's key numbers, the latest evaluation, warnings); plain
    lines otherwise (one per ``log_every`` steps, and every step that has a warning); and
    nothing at all when ``mode`` is "off" (ranks other than 0 under torchrun)."""

    KEYS = (
        ("reward/initial_mean", "reward", "{:.3f}"),
        ("refine/success_rate", "refine_ok", "{:.3f}"),
        ("groups/rescued_share", "rescued", "{:.3f}"),
        ("loss/total", "loss", "{:.3f}"),
        ("update/grad_norm", "grad", "{:.3g}"),
        ("entropy/initial", "entropy", "{:.3f}"),
        ("throughput/sampled_tokens_per_s", "tok/s", "{:,.0f}"),
    )

    def __init__(
        self,
        total_steps: int,
        mode: str = "auto",
        start_step: int = 0,
        log_every: int = 1,
        budget_usd: float | None = None,
    ):
        self.total = total_steps
        self.off = mode == "off"
        self.rich = mode == "rich" or (mode == "auto" and sys.stdout.isatty())
        self.started = time.monotonic()
        self.start_step = start_step
        self.log_every = log_every
        self.budget_usd = budget_usd
        self.spent_usd = 0.0
        self.last_eval: tuple[int, dict[str, float]] | None = None
        self._progress = None
        if self.rich and not self.off:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            class View(Progress):
                """The bar, then the lines of the latest step (rich's documented way to
                add renderables to a live progress display)."""

                def __init__(self, *columns: Any):
                    self.lines: list[Any] = []  # before rich's refresh thread reads it
                    super().__init__(*columns)

                def get_renderables(self):
                    yield self.make_tasks_table(self.tasks)
                    yield from self.lines

            self._progress = View(
                TextColumn("step {task.completed}/{task.total}"),
                BarColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[pace]}"),
            )
            self._task = self._progress.add_task(
                "train", total=total_steps, completed=start_step, pace=""
            )
            self._progress.start()

    def _numbers(self, metrics: dict[str, float]) -> str:
        parts = [f"{short} {fmt.format(metrics[k])}" for k, short, fmt in self.KEYS if k in metrics]
        if "critique/cost" in metrics or self.spent_usd:
            parts.append(f"critic ${self.spent_usd:.4f}")
        return "  ".join(parts)

    def evaluated(self, step: int, metrics: dict[str, float]) -> None:
        """An evaluation outside a training step (step 0): one line, kept for the view."""
        self.last_eval = (step, {k: v for k, v in metrics.items() if k.startswith("eval/")})
        self.message(self._eval_line())

    def _eval_line(self) -> str:
        if self.last_eval is None:
            return ""
        step, ev = self.last_eval
        scores = {k[len("eval/") : -len("/score")]: v for k, v in ev.items()
                  if k.count("/") == 2 and k.endswith("/score")}  # fmt: skip
        if scores:  # benchmarks: each one's headline number (the rest is in metrics.jsonl)
            first = [n for n in ("avg", "avg_math") if n in scores]
            order = first + sorted(n for n in scores if n not in first)
            return f"eval (step {step}) score: " + "  ".join(f"{n} {scores[n]:.3f}" for n in order)
        shown = "  ".join(f"{k[len('eval/'):]} {v:.3f}" for k, v in sorted(ev.items())
                          if not k.endswith("problems"))  # fmt: skip
        return f"eval (step {step}): {shown}"

    def step(self, step: int, metrics: dict[str, float]) -> None:
        if self.off:
            return
        if step == self.start_step + 1:  # time the ETA from the first step, not from start-up
            self.started = time.monotonic() - metrics.get("time/step", 0.0)
        self.spent_usd += metrics.get("critique/cost", 0.0)
        evals = {k: v for k, v in metrics.items() if k.startswith("eval/") and k != "eval/"}
        if evals:
            self.last_eval = (step, evals)
        alerts = step_alerts(metrics, self.spent_usd, self.budget_usd)
        numbers = self._numbers(metrics)
        pace = f"{metrics.get('time/step', 0):.2f}s/step"
        if self._progress is not None:
            from rich.text import Text

            lines = [Text(numbers)]
            if self.last_eval is not None:
                lines.append(Text(self._eval_line()))
            lines += [Text(f"! {a}", style="bold yellow") for a in alerts]
            self._progress.lines = lines
            self._progress.update(self._task, completed=step, pace=pace)
            return
        if not alerts and step != self.total and (step - self.start_step) % self.log_every:
            return
        done = step - self.start_step
        elapsed = time.monotonic() - self.started
        eta = elapsed / max(1, done) * (self.total - step)
        line = f"step {step}/{self.total}  {numbers}  ({pace}, eta {eta:.0f}s)"
        if evals:
            line += f"\n  {self._eval_line()}"
        print(line, flush=True)
        for alert in alerts:
            print(f"  ! {alert}", flush=True)

    def resume_at(self, step: int) -> None:
        """A resumed run: the bar starts at ``step`` and the ETA counts from the next one."""
        self.start_step = step
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def message(self, text: str) -> None:
        """A line on the console (above the bar), also written to train.log."""
        log.info("%s", text)
        self.print_only(text)

    def print_only(self, text: str) -> None:
        if self.off:
            return
        if self._progress is not None:  # as it is: no rich markup ("[data]" stays)
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


class ConsoleLogHandler(logging.Handler):
    """Shows cgrpo's logged warnings on the console as ``cgrpo: warning: ...``, so what
    train.log says went wrong is also seen live. A warning logged from the same place
    over and over (a critic that keeps failing) is shown ``repeats`` times, then only
    counted in train.log, with one line saying so."""

    def __init__(self, console: Console, repeats: int = 3):
        super().__init__(logging.WARNING)
        self.console = console
        self.repeats = repeats
        self.seen: Counter[tuple[str, int]] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == log.name or getattr(record, "console", True) is False:
            return  # the console's own lines (already shown), or marked train.log only
        where = (record.pathname, record.lineno)
        self.seen[where] += 1
        if self.seen[where] > self.repeats:
            return
        text = f"cgrpo: warning: {record.getMessage()}"
        if self.seen[where] == self.repeats:
            text += " (further warnings like this one go to train.log only)"
        self.console.print_only(text)
