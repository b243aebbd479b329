"""``cgrpo eval``'s own words: argument errors that name the argument, one fast line when
the hub is unreachable, the results table saying what each score is, and --compare
naming A and B apart."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.helpers import REPO, run_cli


@pytest.mark.parametrize(
    "args,message",
    [
        (["--benchmarks", "math-5000"],
         "cgrpo eval: --benchmarks: unknown benchmark 'math-5000'; did you mean 'math-500'?"),
        (["--benchmarks", "math-500=,aime24"], "--benchmarks: math-500= names no path"),
        (["--k", "0"], "cgrpo eval: --k 0: must be 1 or more"),
        (["--temperature", "0"], "--temperature 0: the samples' temperature must be above 0"),
        (["--limit", "0"], "--limit 0: must be 1 or more"),
    ],
)  # fmt: skip
def test_argument_errors_name_the_argument_not_the_recipe(tmp_path, args, message):
    out = run_cli("eval", str(tmp_path), *args)
    assert out.returncode == 2
    assert message in out.stderr and "recipe" not in out.stderr


def test_an_unreachable_hub_fails_at_once_in_one_line(tmp_path):
    """As a new user runs it: no HF_* variable set. The hub's endpoint is a closed local
    port (nothing can be downloaded here either way), so the reachability check is refused
    at once; the hub clients go offline and nothing is retried."""
    code = (
        "from cgrpo.builtins.benchmarks.sources import Source\n"
        "list(Source(None, 'nobody/nothing', None, 'test', None, 'demo').rows())"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env |= {"HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}", "HF_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300, cwd=REPO)  # fmt: skip
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("cgrpo.errors.DataError: benchmark demo: nobody/nothing")
    assert "it is not in the local cache and the hub is unreachable (127.0.0.1:" in last
    assert "--benchmarks demo=PATH" in last
    assert "Retrying" not in out.stderr and "Traceback" in out.stderr  # no retry lines


def _closed_port() -> int:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_hub_unreachable_says_why_and_none_when_something_answers():
    from cgrpo.builtins.benchmarks.sources import hub_unreachable

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert hub_unreachable(f"http://127.0.0.1:{port}", timeout=10) is None
    why = hub_unreachable(f"http://127.0.0.1:{port}", timeout=10)
    assert why.startswith(f"127.0.0.1:{port}: ") and "refused" in why.lower()


def eval_json(directory, model, score_is, k, accuracy, score):
    directory.mkdir()
    sets = [{"name": "math-500", "metric_prefix": "eval/math-500/", "score": score_is,
             "problems": 3, "sampling": {"greedy": True, "k": k}}]  # fmt: skip
    metrics = {"eval/math-500/accuracy": accuracy, "eval/math-500/score": score,
               "eval/math-500/length_mean": 10.0}  # fmt: skip
    report = {"model": model, "sets": sets, "metrics": metrics, "prompt_version": "p"}
    (directory / "eval.json").write_text(json.dumps(report))
    return report


def test_the_table_says_what_score_is_and_compare_names_a_and_b_apart(tmp_path, capsys):
    from cgrpo.cli.evaluate import results_table, run_compare

    a = eval_json(tmp_path / "before", "runs/x", "accuracy", 1, 0.5, 0.5)
    eval_json(tmp_path / "after", "runs/x", "avg@4", 4, 0.5, 0.25)
    header, (row,) = results_table(a)
    assert dict(zip(header, row, strict=True))["score is"] == "greedy"
    run_compare(str(tmp_path / "before"), str(tmp_path / "after"), str(tmp_path / "cmp"))
    shown = capsys.readouterr().out
    assert "! math-500: k 1 vs 4, score is accuracy vs avg@4" in shown
    title = (tmp_path / "cmp" / "compare.md").read_text().splitlines()[0]
    assert title == f"# A = {tmp_path / 'before'} (runs/x), B = {tmp_path / 'after'} (runs/x)"
