"""The console of a run: a rich live view on a terminal (progress bar, the step's key
numbers with a short trend of reward and step time, the latest evaluation, warnings) and
plain lines otherwise (CI logs, ``nohup``); logged warnings shown live."""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter, deque
from typing import Any

log = logging.getLogger("cgrpo.console")

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
    if metrics.get("verify/errors", 0) > 0:
        out.append(f"{metrics['verify/errors']:.0f} verifications raised (reward 0; the first "
                   "error is in train.log)")  # fmt: skip
    if metrics.get("critique/failed", 0) > 0:
        out.append(f"{metrics['critique/failed']:.0f} critiques failed (ground-truth fallback)")
    if budget_usd and spent_usd >= 0.9 * budget_usd:
        out.append(f"critic spend ${spent_usd:.4f} is at {spent_usd / budget_usd:.0%} of "
                   f"budget_usd ${budget_usd:.4f}")  # fmt: skip
    return out


SPARKS = "▁▂▃▄▅▆▇█"
ASCII_SPARKS = "_.-~=+*#"  # for a stdout that cannot encode the blocks


def sparkline(values: list[float], ticks: str = SPARKS) -> str:
    """One character per value, its height scaled between the values' min and max (all
    equal: every character at the lowest height)."""
    lo, hi = min(values), max(values)
    if hi == lo:
        return ticks[0] * len(values)
    top = len(ticks) - 1
    return "".join(ticks[int((v - lo) / (hi - lo) * top + 0.5)] for v in values)


class Trend:
    """The last ``steps`` values of the reward and of the step's time, as sparklines with
    their range: the current numbers alone hide whether the run is going anywhere."""

    KEYS = (("reward/initial_mean", "reward"), ("time/step", "s/step"))

    def __init__(self, steps: int = 20, ticks: str = SPARKS):
        self.steps, self.ticks = steps, ticks
        self.values: dict[str, deque[float]] = {k: deque(maxlen=steps) for k, _ in self.KEYS}

    def add(self, metrics: dict[str, float]) -> None:
        for key, values in self.values.items():
            value = metrics.get(key)
            if isinstance(value, int | float) and value == value:  # NaN is not a point
                values.append(float(value))

    def line(self) -> str:
        parts = []
        for key, short in self.KEYS:
            vs = list(self.values[key])
            if len(vs) >= 2:
                parts.append(
                    f"{short} {sparkline(vs, self.ticks)} ({min(vs):.3g} to {max(vs):.3g})"
                )
        longest = max(len(v) for v in self.values.values())
        return f"last {longest} steps: " + "  ".join(parts) if parts else ""


def _stdout_ticks() -> str:
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    return SPARKS if encoding.startswith("utf") else ASCII_SPARKS


class Console:
    """Live progress: on a terminal (or when forced) one rich view refreshed per step
    (progress bar and ETA, the step's key numbers and the trend of reward and step time,
    the latest evaluation, warnings); plain lines otherwise (one per ``log_every`` steps,
    and every step that has a warning); and nothing at all when ``mode`` is "off" (ranks
    other than 0 under torchrun)."""

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
        self.last_eval: tuple[str, dict[str, float]] | None = None
        self.trend = Trend(ticks=SPARKS if self.rich else _stdout_ticks())
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
        if self.spent_usd or self.budget_usd:  # a rule-based critic costs nothing: no $0
            parts.append(f"critic ${self.spent_usd:.4f}")
        return "  ".join(parts)

    def evaluated(self, where: str, metrics: dict[str, float]) -> None:
        """An evaluation outside an RL step, one line kept for the view: ``where`` names
        the phase and step ("RL step 0", "warm-up step 20/200")."""
        evals = {k: v for k, v in metrics.items() if k.startswith("eval/")}
        self.last_eval = (where, evals)
        self.message(self._eval_line())

    def _eval_line(self) -> str:
        if self.last_eval is None:
            return ""
        where, ev = self.last_eval  # e.g. "RL step 20", "warm-up step 4/8"
        scores = {k[len("eval/") : -len("/score")]: v for k, v in ev.items()
                  if k.count("/") == 2 and k.endswith("/score")}  # fmt: skip
        if scores:  # benchmarks: each one's headline number (the rest is in metrics.jsonl)
            first = [n for n in ("avg", "avg_math") if n in scores]
            order = first + sorted(n for n in scores if n not in first)
            return f"eval ({where}) score: " + "  ".join(f"{n} {scores[n]:.3f}" for n in order)
        shown = "  ".join(f"{k[len('eval/'):]} {v:.3f}" for k, v in sorted(ev.items())
                          if not k.endswith("problems"))  # fmt: skip
        return f"eval ({where}): {shown}"

    def step(self, step: int, metrics: dict[str, float]) -> None:
        if self.off:
            return
        if step == self.start_step + 1:  # time the ETA from the first step, not from start-up
            self.started = time.monotonic() - metrics.get("time/step", 0.0)
        self.spent_usd += metrics.get("critique/cost", 0.0)
        evals = {k: v for k, v in metrics.items() if k.startswith("eval/") and k != "eval/"}
        if evals:
            self.last_eval = (f"RL step {step}", evals)
        alerts = step_alerts(metrics, self.spent_usd, self.budget_usd)
        numbers = self._numbers(metrics)
        self.trend.add(metrics)
        trend = self.trend.line()
        pace = f"{metrics.get('time/step', 0):.2f}s/step"
        if self._progress is not None:
            from rich.text import Text

            lines = [Text(numbers)] + ([Text(trend, style="dim")] if trend else [])
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
        line += f"  | {trend}" if trend else ""
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
