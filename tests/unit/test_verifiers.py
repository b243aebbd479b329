"""Verifiers, including nasty inputs."""

import threading
import time

import pytest

from cgrpo.builtins.verifiers.choice import ChoiceVerifier
from cgrpo.builtins.verifiers.exact import ExactVerifier
from cgrpo.builtins.verifiers.extract import last_boxed
from cgrpo.builtins.verifiers.math import MathVerifier
from cgrpo.types import Problem


def prob(answer):
    return Problem("p", "q", answer)


@pytest.mark.parametrize(
    "text,expected",
    [
        (r"so \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{1} then \boxed{2}", "2"),
        (r"\boxed{\{1, \{2\}\}}", r"\{1, \{2\}\}"),
        (r"\boxed{a^{b^{c}}}", "a^{b^{c}}"),
        (r"\fbox{7}", "7"),
        (r"\boxed{unclosed", None),
        ("no box", None),
        ("", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    "response,answer,ok",
    [
        (r"The answer is \boxed{\frac{1}{2}}.", "0.5", True),
        (r"\boxed{0.5}", r"\frac{1}{2}", True),
        (r"\boxed{3}", "4", False),
        (r"first \boxed{4} then \boxed{3}", "3", True),
        ("The answer is ４２.", "42", True),  # full-width digits, no box: fallback extraction
        (r"\boxed{１２}", "12", True),
        (r"\boxed{10^{100000}}", "10^{100000}", True),  # huge number, exact power
        (r"\boxed{123456789012345678901234567890}", "123456789012345678901234567890", True),
    ],
)
def test_math_verifier(response, answer, ok):
    verdict = MathVerifier().verify(response, prob(answer))
    assert verdict.correct is ok
    assert verdict.score == float(ok)


def test_math_verifier_empty_and_unparsable_text_scores_zero():
    v = MathVerifier()
    assert v.verify("", prob("1")).reason == "no_answer"
    assert v.verify(r"\boxed{}", prob("1")).score == 0.0
    assert v.verify("🙂 ∑∫ no answer here", prob("1")).score == 0.0


def test_strict_mode_needs_a_box():
    v = MathVerifier(MathVerifier.Options(fallback="none"))
    assert v.verify("The answer is 42.", prob("42")).reason == "no_answer"
    assert v.verify(r"\boxed{42}", prob("42")).correct


def test_pathological_expression_times_out_instead_of_hanging():
    v = MathVerifier(MathVerifier.Options(timeout_s=1))
    started = time.monotonic()
    verdict = v.verify(r"\boxed{2^{2^{2^{2^{2^{2}}}}}}", prob("3"))
    assert time.monotonic() - started < 8
    assert verdict.score == 0.0


def test_timeout_is_enforced_off_the_main_thread_too():
    v = MathVerifier(MathVerifier.Options(timeout_s=1))
    out = {}

    def work():
        started = time.monotonic()
        out["slow"] = v.verify(r"\boxed{2^{2^{2^{2^{2^{2}}}}}}", prob("3"))
        out["elapsed"] = time.monotonic() - started
        out["fast"] = v.verify(r"\boxed{\frac{2}{4}}", prob("0.5"))

    t = threading.Thread(target=work)
    t.start()
    t.join(30)
    assert out["slow"].score == 0.0 and out["slow"].reason == "timeout"
    assert out["elapsed"] < 8
    assert out["fast"].correct


def test_a_forked_verification_ends_itself_when_nobody_kills_it():
    """Off the main thread the math verifier runs each call in a forked child that its
    parent kills at the timeout. A SIGKILLed parent cannot, so the child bounds its own
    life with SIGALRM: an orphan stuck on a pathological expression would otherwise hold
    the trainer's stdout forever. Here the child is started as the parent starts it, with
    a 1 s lifetime, and nobody kills it."""
    import multiprocessing
    import signal

    from cgrpo.builtins.verifiers.math import _child

    ctx = multiprocessing.get_context("fork")
    _recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, time.sleep, (60,), 1), daemon=True)
    started = time.monotonic()
    proc.start()
    proc.join(20)
    assert proc.exitcode == -signal.SIGALRM
    assert time.monotonic() - started < 10


def test_exact_verifier():
    v = ExactVerifier()
    assert v.verify(r"so \boxed{Paris}", prob("paris")).correct
    assert v.verify("  New   York. ", prob("new york")).correct
    assert not v.verify(r"\boxed{Rome}", prob("Paris")).correct
    assert v.verify("", prob("x")).reason == "no_answer"
    strict = ExactVerifier(ExactVerifier.Options(case_sensitive=True))
    assert not strict.verify("paris", prob("Paris")).correct


@pytest.mark.parametrize(
    "response,letter",
    [
        (r"... \boxed{C}", "C"),
        (r"\boxed{\text{(B)}}", "B"),
        ("The answer is (D).", "D"),
        ("Answer: A", "A"),
        ("I think (B) but the answer is C", "C"),
        ("B", "B"),
        ("A cat sat on the mat.", None),  # the article 'A' is not an answer
        ("", None),
    ],
)
def test_choice_extraction(response, letter):
    assert ChoiceVerifier().extract(response) == letter


def test_choice_verifier_checks_letter_range_and_reference():
    v = ChoiceVerifier(ChoiceVerifier.Options(letters="ABCD"))
    assert v.verify("answer is (b)", prob("B")).correct
    assert not v.verify(r"\boxed{E}", prob("B")).correct
    with pytest.raises(ValueError, match="letters"):
        v.verify("A", prob("Z"))
    with pytest.raises(ValueError):
        ChoiceVerifier.Options(letters="abc")


@pytest.mark.parametrize(
    "gold,pred",
    [
        ("5", "5"), ("5", "6"), ("-3", "-3"), ("-0", "0"), ("007", "7"), ("12", "-12"),
        ("123456789012345678901234567890", "123456789012345678901234567890"),
        ("123456789012345678901234567890", "123456789012345678901234567891"),
        ("\\frac{1}{2}", "\\frac{1}{2}"), ("\\sqrt{2}", "\\sqrt{2}"), ("[1, 5)", "[1, 5)"),
        ("x^2 + 1", "x^2 + 1"), ("10", "10.0"), ("0.5", "\\frac{1}{2}"), ("1000", "1,000"),
    ],
)  # fmt: skip
def test_the_fast_path_agrees_with_math_verify(gold, pred):
    """Same text or two integers are decided without sympy; math-verify's own verdict on
    the same pair is identical (where the fast path declines, nothing changes)."""
    from cgrpo.builtins.verifiers.math import _compare, quick_compare

    full, _ = _compare(gold, pred, True, 5, 6)
    quick = quick_compare(gold, pred)
    assert quick is None or quick == full, (gold, pred, quick, full)
    assert MathVerifier().verify(f"\\boxed{{{pred}}}", prob(gold)).correct == full


def test_an_unboxed_response_without_an_expression_never_parses_the_reference():
    """Early in training most responses are like this: the reference answer (2-3 ms of
    sympy parsing) is only parsed when there is something to compare it with."""
    from cgrpo.builtins.verifiers.math import _parse_gold

    v = MathVerifier()
    gold = "\\frac{7}{13}"
    before = _parse_gold.cache_info()
    assert v.verify("no number here, just words", prob(gold)).reason == "no_answer"
    assert v.verify("🙂 ∑∫", prob("True")).reason == "no_answer"  # a non-math reference too
    assert _parse_gold.cache_info().misses == before.misses
    assert v.verify("so it is 7/13", prob(gold)).correct  # an expression: parsed, compared
    assert _parse_gold.cache_info().misses == before.misses + 1


ECHOES = [r"\boxed{1 + 9}", r"\boxed{2*5}", "The answer is 1 + 9", r"$\boxed{9+1}$"]
NUMBERS = [r"\boxed{10}", "The answer is 10.", r"\boxed{10.0}", r"1 + 9 = \boxed{ 10 }"]


def test_the_arithmetic_task_rewards_a_number_not_the_question_echoed():
    """For "What is 1 + 9?" math-verify finds 1 + 9 equal to 10 symbolically, so a policy
    that copies the question scored 1.0. The arithmetic task's problems ask the math verifier
    (default answer_form: auto) for a number literal."""
    from cgrpo.builtins.tasks.arithmetic import ArithmeticTask

    task = ArithmeticTask(ArithmeticTask.Options(size=200, digits=1))
    problem = next(p for p in task.load() if p.question == "What is 1 + 9?")
    v = MathVerifier()
    for response in ECHOES:
        verdict = v.verify(response, problem)
        assert verdict.score == 0.0 and verdict.reason == "not_a_number", response
    for response in NUMBERS:
        assert v.verify(response, problem).correct, response


def test_a_math_style_answer_may_stay_an_unsimplified_expression_unless_asked():
    """MATH-style references accept an equal but unsimplified expression on purpose;
    answer_form: number asks for a literal everywhere, expression nowhere."""
    plain = Problem("p", "What is 1 + 9?", "10")
    assert all(MathVerifier().verify(r, plain).correct for r in ECHOES)
    strict = MathVerifier(MathVerifier.Options(answer_form="number"))
    assert not any(strict.verify(r, plain).correct for r in ECHOES)
    assert all(strict.verify(r, plain).correct for r in NUMBERS)
    assert strict.verify(r"\boxed{\frac{1}{2}}", Problem("h", "q", "0.5")).reason == "not_a_number"
    from cgrpo.builtins.tasks.arithmetic import ArithmeticTask

    arithmetic = ArithmeticTask().load()[0]
    loose = MathVerifier(MathVerifier.Options(answer_form="expression"))
    a, _, b = arithmetic.question.removeprefix("What is ").rstrip("?").partition(" + ")
    assert loose.verify(rf"\boxed{{{a} + {b}}}", arithmetic).correct
