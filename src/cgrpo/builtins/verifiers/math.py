"""``math``: the final ``\\boxed{}`` answer compared symbolically with math-verify.

Extraction: the content of the last ``\\boxed{...}`` (nested braces handled). When the
response has no box, ``fallback="expression"`` (default) lets math-verify find the last
LaTeX or plain-number expression in the response's tail; ``fallback="none"`` scores it 0
(the paper's strict rule). Comparison: ``math_verify.verify(gold, prediction)``, which
treats 0.5, 1/2 and \\frac{1}{2} as equal and rounds numbers to ``float_rounding`` places.
A reference that is not mathematics (TheoremQA's ``True``/``False``) is compared word for
word with the boxed answer, ignoring case.

What the final answer may be (``answer_form``): an *expression* equal to the reference is
accepted on purpose for MATH-style answers (``\\frac{1}{2}``, ``2\\sqrt{2}``, an unsimplified
but equal form); a *number* literal (``10``, ``-3``, ``2.5``) is required where the
question itself is an expression equal to its answer: for "What is 1 + 9?" the echoed
``\\boxed{1 + 9}`` would otherwise score 1.0 and a policy could learn to copy the
question. ``auto`` (default) asks for a number where the problem says so
(``metadata["answer_form"] == "number"``: the arithmetic tasks) and accepts expressions
elsewhere. A non-literal answer in number form scores 0 with reason ``not_a_number``.

Timeouts: a pathological expression (``2^{2^{2^{2^{2^{2}}}}}``) can keep sympy busy for
minutes. On the main thread math-verify's own alarm-based timeout bounds each call; off
the main thread (where ``signal.alarm`` is unavailable) the call runs in a forked child
process that is killed after ``timeout_s``. Either way a timeout scores 0 with reason
``timeout``; it never hangs or crashes the run.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import re
import signal
import threading
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cgrpo.builtins.verifiers.extract import last_boxed, normalize_text
from cgrpo.types import Problem, Verdict

_TAIL_CHARS = 400  # the fallback only looks at the end, where a final answer is written
_TIMED_OUT = object()
_TRUTH = {"true", "false"}  # math-verify reads them as symbols, case-sensitively


def _child(conn, fn, args, lifetime_s: int):  # pragma: no cover - runs in the forked child
    # SIGALRM ends this child even if its parent was SIGKILLed and cannot kill it: an orphan
    # stuck on a pathological expression would hold the trainer's stdout forever
    signal.alarm(lifetime_s)
    try:
        conn.send(fn(*args))
    except Exception as exc:
        conn.send(exc)
    finally:
        conn.close()


def call_with_process_timeout(fn, args: tuple, timeout_s: float):
    """Run ``fn(*args)`` in a forked child and return its result, or ``_TIMED_OUT``."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    lifetime = math.ceil(timeout_s) + 1  # the parent kills it at timeout_s; this is a backstop
    proc = ctx.Process(target=_child, args=(send, fn, args, lifetime), daemon=True)
    proc.start()
    send.close()
    try:
        result = recv.recv() if recv.poll(timeout_s) else _TIMED_OUT
    except EOFError:
        result = RuntimeError("verifier child process died")
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        recv.close()
    if isinstance(result, Exception):
        raise result
    return result


@functools.cache
def _math_verify():
    """math-verify's ``(parse, verify)``, imported once (not at module import: it pulls
    sympy, ~1 s, which a run with another verifier never needs)."""
    from math_verify import parse, verify

    return parse, verify


_INTEGER = re.compile(r"-?\d+")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
_THOUSANDS = re.compile(r"(?<=\d)(,|\\,)(?=\d{3}(?!\d))")
NUMBER_FORM = "number"  # Problem.metadata["answer_form"] of tasks whose answers are numbers


def is_number_literal(text: str) -> bool:
    """Whether ``text`` is written as a plain number (``10``, ``-3``, ``2.5``, ``1,000``,
    in ``$...$`` or with a final full stop), not an expression that evaluates to one."""
    t = text.strip().strip("$").strip().rstrip(".").strip()
    return bool(_NUMBER.fullmatch(_THOUSANDS.sub("", t)))


def quick_compare(gold: str, pred: str) -> bool | None:
    """The verdict without sympy where it is certain, else None: the same text, or two
    integers (most AIME/AMC/MATH answers). math-verify agrees on both (tested)."""
    g, p = gold.strip(), pred.strip()
    if g and g == p:
        return True
    if _INTEGER.fullmatch(g) and _INTEGER.fullmatch(p):
        return int(g) == int(p)
    return None


@functools.lru_cache(maxsize=8192)
def _parse_gold(gold_text: str, timeout: int | None) -> tuple:
    """Reference answers repeat G+K times per step: parse each once."""
    parse, _ = _math_verify()
    gold = parse(f"\\boxed{{{gold_text}}}", parsing_timeout=timeout)
    return tuple(gold or parse(gold_text, parsing_timeout=timeout))


def _compare(gold_text: str, pred_text: str, boxed: bool, timeout: int | None, rounding: int):
    """Parse both sides and verify; returns (correct, extracted_string)."""
    parse, verify = _math_verify()
    pred = None
    if not boxed:  # an unboxed tail without an expression fails whatever the reference is:
        pred = parse(pred_text, parsing_timeout=timeout)  # the reference is not parsed then
        if not pred:
            return False, None
    gold = [] if _words(gold_text) in _TRUTH else list(_parse_gold(gold_text, timeout))
    if not gold:  # not mathematics (TheoremQA's True/False, a name): compare the words
        if not boxed:
            return False, None
        return _words(pred_text) == _words(gold_text), pred_text
    if pred is None:
        pred = parse(f"\\boxed{{{pred_text}}}", parsing_timeout=timeout)
    if not pred:
        return False, None
    extracted = str(pred[-1]) if len(pred) > 1 else str(pred[0])
    ok = bool(verify(gold, pred, float_rounding=rounding, timeout_seconds=timeout))
    return ok, extracted


def _words(text: str) -> str:
    return " ".join(re.sub(r"\\text\{([^}]*)\}", r"\1", text).casefold().strip(" .$").split())


class MathVerifier:
    """Last \\boxed{} answer vs. the reference, by symbolic equivalence (math-verify)."""

    verify_in_processes = True  # sympy-bound: evaluation spreads it over processes

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        timeout_s: int = Field(5, ge=1, le=300, description="seconds per parse+compare")
        fallback: str = Field(
            "expression",
            pattern="^(expression|none)$",
            description="when there is no \\boxed{}: 'expression' (last expression in the "
            "tail) or 'none' (score 0)",
        )
        float_rounding: int = Field(6, ge=0, le=15, description="decimal places compared")
        answer_form: Literal["auto", "expression", "number"] = Field(
            "auto",
            description="what the final answer may be: 'expression' (any expression equal "
            "to the reference; MATH-style answers are accepted unsimplified on purpose), "
            "'number' (a number literal: an expression equal to the answer, such as the "
            "question's own '1 + 9', scores 0), 'auto' (number where the task asks for it, "
            "as the arithmetic tasks do; else expression)",
        )

    def __init__(self, options: Options | None = None, context: Any = None):
        self.options = options or self.Options()

    def wants_number(self, problem: Problem) -> bool:
        form = self.options.answer_form
        return form == NUMBER_FORM or (
            form == "auto" and problem.metadata.get("answer_form") == NUMBER_FORM
        )

    def verify(self, response: str, problem: Problem) -> Verdict:
        text = normalize_text(response)
        boxed = last_boxed(text)
        if boxed is None and self.options.fallback == "none":
            return Verdict(0.0, False, None, "no_answer")
        pred = boxed if boxed is not None else text[-_TAIL_CHARS:]
        if not pred.strip():
            return Verdict(0.0, False, None, "no_answer")
        number = self.wants_number(problem)
        if boxed is not None and number and not is_number_literal(boxed):
            return Verdict(0.0, False, boxed, "not_a_number")
        gold = normalize_text(problem.answer)
        if boxed is not None:
            quick = quick_compare(gold, boxed)
            if quick is not None:
                return Verdict(float(quick), quick, boxed)
        timeout = self.options.timeout_s
        started = time.monotonic()
        try:
            if threading.current_thread() is threading.main_thread():
                result = _compare(
                    gold, pred, boxed is not None, timeout, self.options.float_rounding
                )
            else:
                result = call_with_process_timeout(
                    _compare,
                    (gold, pred, boxed is not None, None, self.options.float_rounding),
                    timeout,
                )
        except Exception as exc:  # a verifier bug on one response must not stop a run
            return Verdict.from_exception(exc, boxed)
        if result is _TIMED_OUT:
            return Verdict(0.0, False, boxed, "timeout")
        ok, extracted = result
        if not ok and time.monotonic() - started >= timeout:
            return Verdict(0.0, False, boxed if boxed is not None else extracted, "timeout")
        if extracted is None:
            return Verdict(0.0, False, None, "no_answer")
        if boxed is None and number and not is_number_literal(extracted):
            return Verdict(0.0, False, extracted, "not_a_number")
        return Verdict(float(ok), ok, boxed if boxed is not None else extracted)
