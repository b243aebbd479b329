"""evaluate_sets: per-benchmark and macro-averaged metrics, one generate call per sampling
setting across sets, and verification in worker processes that gives the same verdicts."""

from __future__ import annotations

import os

import pytest

from cgrpo.builtins.verifiers.choice import ChoiceVerifier
from cgrpo.builtins.verifiers.math import MathVerifier
from cgrpo.train.evaluation import EvalSet, evaluate_sets
from cgrpo.train.verify_pool import MIN_RESPONSES, VerifyPool
from cgrpo.types import Completion, Problem


class ScriptedPolicy:
    """A sampler that answers from a script (problem id -> greedy text, sampled texts):
    the model is not what these tests are about, the bookkeeping around it is."""

    def __init__(self, problems, script):
        self.by_prompt = {(i,): p.id for i, p in enumerate(problems)}
        self.script = script
        self.calls = []

    def generate(self, prompts, params, seeds=None):
        self.calls.append((len(prompts), params.n, params.greedy))
        out = []
        for ids in prompts:
            greedy, sampled = self.script[self.by_prompt[tuple(ids)]]
            texts = [greedy] if params.greedy else sampled[: params.n]
            out.append([Completion([1] * 3, None, t, "stop") for t in texts])
        return out


class Prompts:
    def __init__(self, problems):
        self.index = {p.id: i for i, p in enumerate(problems)}

    def prompt_ids(self, p):
        return [self.index[p.id]]


def test_metrics_per_benchmark_macro_averages_and_batched_generation():
    math = [Problem("m1", "1+1?", "2"), Problem("m2", "2+2?", "4")]
    mc = [Problem("c1", "pick", "B"), Problem("c2", "pick", "C")]
    script = {
        "m1": ("\\boxed{2}", ["\\boxed{2}", "\\boxed{3}", "\\boxed{2}", "\\boxed{2}"]),
        "m2": ("\\boxed{5}", ["\\boxed{5}", "\\boxed{5}", "\\boxed{4}", "\\boxed{5}"]),
        "c1": ("\\boxed{B}", []),
        "c2": ("\\boxed{A}", []),
    }
    policy = ScriptedPolicy(math + mc, script)
    sets = [
        EvalSet("algebra", math, MathVerifier(), ("math", {}), k=4, category="math"),
        EvalSet("quiz", mc, ChoiceVerifier(), ("choice", {}), k=1, category="general"),
    ]
    m = evaluate_sets(policy, Prompts(math + mc), sets, max_new_tokens=8).metrics
    assert policy.calls == [(4, 1, True), (2, 4, False)]  # one greedy call for both sets
    assert m["eval/algebra/accuracy"] == 0.5 and m["eval/quiz/accuracy"] == 0.5
    # m1: 3 of 4 right, m2: 1 of 4 -> avg@4 = 0.5; pass@4 = 1; maj@4: m1 yes, m2 no
    assert m["eval/algebra/avg@4"] == 0.5 and m["eval/algebra/pass@4"] == 1.0
    assert m["eval/algebra/maj@4"] == 0.5
    assert m["eval/algebra/score"] == 0.5  # avg@k for a sampled set
    assert m["eval/quiz/score"] == 0.5  # greedy accuracy otherwise
    assert m["eval/avg/score"] == 0.5 and m["eval/avg_math/score"] == 0.5
    assert m["eval/avg/accuracy"] == 0.5 and m["time/eval_verify"] >= 0


def test_k_samples_on_a_greedy_benchmark_leave_its_score_greedy():
    """--k 4 (eval.k) on math-500, a greedy benchmark, adds avg@4, pass@4 and maj@4; its
    score stays greedy accuracy (the paper's number). A benchmark reported over samples
    (AIME: own k 16) scores avg@k at the k it was given."""
    math = [Problem("m1", "1+1?", "2"), Problem("m2", "2+2?", "4")]
    script = {
        "m1": ("\\boxed{2}", ["\\boxed{2}", "\\boxed{3}", "\\boxed{2}", "\\boxed{2}"]),
        "m2": ("\\boxed{4}", ["\\boxed{5}", "\\boxed{5}", "\\boxed{4}", "\\boxed{5}"]),
    }
    greedy = EvalSet("math-500", math, MathVerifier(), ("math", {}), k=4, own_k=1)
    sampled = EvalSet("aime24", math, MathVerifier(), ("math", {}), k=4, own_k=16)
    assert (greedy.score_metric, sampled.score_metric) == ("accuracy", "avg@4")
    policy = ScriptedPolicy(math, script)
    said = []
    m = evaluate_sets(policy, Prompts(math), [greedy], max_new_tokens=8, say=said.append).metrics
    assert said[0] == "greedy responses to 2 problems (1 set)"
    # greedy: both right -> 1.0; samples: 3 of 4 and 1 of 4 right -> avg@4 = 0.5
    assert m["eval/math-500/accuracy"] == 1.0 and m["eval/math-500/avg@4"] == 0.5
    assert m["eval/math-500/score"] == 1.0
    m = evaluate_sets(policy, Prompts(math), [sampled], max_new_tokens=8).metrics
    assert m["eval/aime24/score"] == 0.5
    unset = EvalSet("", math, MathVerifier(), ("math", {}), k=4)  # eval.k is its own k
    assert unset.score_metric == "avg@4"
    assert EvalSet("x", math, MathVerifier(), k=1, own_k=16).score_metric == "accuracy"


def test_worker_processes_give_the_same_verdicts_and_keep_the_timeout_rule():
    """The same 300 responses verified in this process and in 2 spawned workers; a
    pathological expression times out in a worker instead of hanging it."""
    problems = [Problem(str(i), "q", str(i % 7)) for i in range(MIN_RESPONSES + 44)]
    pairs = [(f"\\boxed{{{(i * 3) % 7}}}", p) for i, p in enumerate(problems)]
    pairs[5] = ("\\boxed{2^{2^{2^{2^{2^{2^{2^{2}}}}}}}}", problems[5])
    verifier = MathVerifier(MathVerifier.Options(timeout_s=1))
    inline = VerifyPool(1).verify(verifier, ("math", {"timeout_s": 1}), pairs)
    pool = VerifyPool(2)
    try:
        parallel = pool.verify(verifier, ("math", {"timeout_s": 1}), pairs)
        assert pool._pool is not None  # it did use the workers
    finally:
        pool.close()
    assert [(v.correct, v.extracted) for v in parallel] == [
        (v.correct, v.extracted) for v in inline
    ]
    assert parallel[5].reason == inline[5].reason == "timeout"
    right = [i for i in range(len(pairs)) if i != 5 and (i * 3) % 7 == i % 7]
    assert sum(v.correct for v in parallel) == len(right)


@pytest.mark.parametrize("workers,count", [(1, 400), (2, 10)])
def test_few_responses_or_one_worker_stay_in_this_process(workers, count):
    pool = VerifyPool(workers)
    pairs = [("\\boxed{1}", Problem("1", "q", "1"))] * count
    assert all(v.correct for v in pool.verify(MathVerifier(), ("math", {}), pairs))
    assert pool._pool is None


def test_off_the_main_thread_even_one_worker_verifies_in_a_process():
    """The pipelined rollouts verify on a thread of their own, where the math verifier
    would fork a process per response for its timeout (~0.2 s each: 64 responses took
    12-56 s a step in benchmarks/pipeline.py); there one spawned worker takes the batch,
    even a small one, with the same verdicts and the timeout rule."""
    import threading

    problems = [Problem(str(i), "q", str(i % 7)) for i in range(8)]
    pairs = [(f"\\boxed{{{(i * 3) % 7}}}", p) for i, p in enumerate(problems)]
    pairs[5] = ("\\boxed{2^{2^{2^{2^{2^{2^{2^{2}}}}}}}}", problems[5])
    verifier = MathVerifier(MathVerifier.Options(timeout_s=1))
    inline = VerifyPool(1).verify(verifier, ("math", {"timeout_s": 1}), pairs)
    pool, out = VerifyPool(1), []
    try:
        worker = threading.Thread(
            target=lambda: out.append(pool.verify(verifier, ("math", {"timeout_s": 1}), pairs))
        )
        worker.start()
        worker.join()
        assert pool._pool is not None  # one worker process took it
    finally:
        pool.close()
    assert [(v.correct, v.reason) for v in out[0]] == [(v.correct, v.reason) for v in inline]
    assert out[0][5].reason == "timeout"


def test_a_worker_that_dies_falls_back_to_verifying_here(tmp_path, caplog):
    """A reward function that kills its process when it runs in a worker (as the OOM killer
    would): the batch is verified in this process instead, with a warning, and later
    batches stay here."""
    from cgrpo.builtins.verifiers.composed import PythonVerifier

    rewards = tmp_path / "dies_in_workers.py"
    rewards.write_text(
        "import multiprocessing, os\n"
        "def score(response, problem):\n"
        "    if multiprocessing.parent_process() is not None:\n"
        "        os._exit(3)\n"
        "    return response == problem.answer\n"
    )
    options = {"path": str(rewards), "function": "score"}
    verifier = PythonVerifier(PythonVerifier.Options(**options))
    pairs = [(str(i % 2), Problem(str(i), "q", "1")) for i in range(MIN_RESPONSES)]
    pool = VerifyPool(2)
    try:
        verdicts = pool.verify(verifier, ("python", options), pairs)
    finally:
        pool.close()
    assert [v.correct for v in verdicts] == [i % 2 == 1 for i in range(MIN_RESPONSES)]
    assert "verification worker processes failed" in caplog.text and pool.workers == 1


_KILLED_PARENT = """
import os, signal, sys, threading
from cgrpo.builtins.verifiers.math import MathVerifier
from cgrpo.train.verify_pool import VerifyPool
from cgrpo.types import Problem

pool = VerifyPool(1)
pairs = [("\\\\boxed{1}", Problem("0", "q", "1"))]
thread = threading.Thread(target=pool.verify, args=(MathVerifier(), ("math", {}), pairs))
thread.start()
thread.join()
print(" ".join(str(p.pid) for p in pool._pool._processes.values()), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_worker_processes_exit_when_the_trainer_is_killed():
    """A SIGKILLed trainer (the OOM killer, a preempted job, ``kill -9``) leaves no
    verification worker behind: an orphan would live on forever holding the trainer's
    stdout, so a launcher or ``subprocess.run`` reading it would hang instead of seeing the
    crash (CI's kill-and-resume test through the servers hung for 600 s this way)."""
    import subprocess
    import sys
    import time

    done = subprocess.run(
        [sys.executable, "-c", _KILLED_PARENT], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == -9, done.stderr
    pids = [int(p) for p in done.stdout.split()]
    assert pids
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
