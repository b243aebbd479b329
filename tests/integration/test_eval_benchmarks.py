"""Benchmarks end to end through the real CLI: evaluated during training (step 0 and every
eval.every steps, per benchmark and averaged, keep_best on an average), then ``cgrpo eval``
on the run and on a plain model directory, and ``cgrpo eval --compare``."""

from __future__ import annotations

import json

from tests.helpers import REPO, run_cli

QUICKSTART = str(REPO / "recipes" / "quickstart-cpu.yaml")
FIXTURES = REPO / "tests" / "fixtures" / "benchmarks"


def test_benchmarks_in_training_then_cgrpo_eval_and_compare(tmp_path):
    benchmarks = (
        "eval.benchmarks=[{name: arithmetic-test, options: {size: 12}}, "
        f"{{name: math-500, options: {{path: {FIXTURES / 'math-500'}}}}}, "
        f"{{name: gpqa-diamond, options: {{path: {FIXTURES / 'gpqa-diamond'}}}}}]"
    )
    out = run_cli(
        "run", QUICKSTART, "run.console=plain", "sft.steps=3", "train.steps=2",
        "data.task.options.size=40", "algorithm.prompts_per_step=2",
        "algorithm.micro_batch_size=16", "data.prompt.max_prompt_tokens=128",
        "eval.every=2", benchmarks, "train.keep_best=eval/avg/score",
        f"model.path={tmp_path / 'tiny'}", f"run.output_dir={tmp_path / 'runs'}", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / "quickstart"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in lines if "eval/avg/score" in m]
    assert [m["step"] for m in evals] == [0, 2]  # step 0 (eval.at_start) and eval.every
    for m in evals:
        assert m["eval/arithmetic-test/problems"] == 12 and m["eval/math-500/problems"] == 3
        assert m["eval/gpqa-diamond/problems"] == 2
        scores = [m[f"eval/{b}/score"] for b in ("arithmetic-test", "math-500", "gpqa-diamond")]
        assert abs(m["eval/avg/score"] - sum(scores) / 3) < 1e-9
        assert abs(m["eval/avg_math/score"] - sum(scores[:2]) / 2) < 1e-9
    assert "eval (RL step 0) score: avg " in out.stdout and "gpqa-diamond" in out.stdout

    # the command: the run's recipe and newest checkpoint, k samples
    ev = run_cli("eval", str(run), "--benchmarks", "arithmetic-test", "--k", "4",
                 "--out", str(tmp_path / "ev_run"), cwd=tmp_path)  # fmt: skip
    assert ev.returncode == 0, ev.stderr[-3000:]
    report = json.loads((tmp_path / "ev_run" / "eval.json").read_text())
    assert report["recipe"].endswith("recipe.yaml") and report["model"].endswith("step-2")
    (only,) = report["sets"]
    assert only["name"] == "arithmetic-test" and only["sampling"]["k"] == 4
    # one k in eval.json (the preset's is not kept beside it), who set it, and what score
    # is: arithmetic-test is a greedy benchmark, so --k adds avg@4 and its score stays greedy
    assert only["sampling"]["set_by"] == ["eval.k"] and "k" not in only["data"]["options"]
    assert only["score"] == "accuracy" and {"avg@4", "pass@4", "maj@4"} <= set(only["metrics"])
    m = report["metrics"]
    assert m["eval/arithmetic-test/score"] == m["eval/arithmetic-test/accuracy"]
    assert only["data"]["seed"] == 4321 and report["prompt"]["max_prompt_tokens"] == 128
    generations = [
        json.loads(x) for x in (tmp_path / "ev_run" / "generations.jsonl").read_text().splitlines()
    ]
    assert len(generations) == 100 * 5  # greedy + 4 samples for each of 100 problems
    greedy = [g for g in generations if g["mode"] == "greedy"]
    accuracy = report["metrics"]["eval/arithmetic-test/accuracy"]
    assert accuracy == sum(g["correct"] for g in greedy) / 100
    table = (tmp_path / "ev_run" / "eval.md").read_text()
    assert "| arithmetic-test | 100 |" in table and "avg (all)" in table
    assert "arithmetic-test" in ev.stdout and "pass@k" in ev.stdout

    # a plain model directory: default prompt settings, benchmarks required
    bare = run_cli("eval", str(tmp_path / "tiny"), cwd=tmp_path)
    assert bare.returncode == 2 and "name --benchmarks" in bare.stderr
    base = run_cli("eval", str(tmp_path / "tiny"), "--benchmarks",
                   f"arithmetic-test,math-500={FIXTURES / 'math-500' / 'test.jsonl'}",
                   "sampling.max_new_tokens=16", "--out", str(tmp_path / "ev_base"),
                   cwd=tmp_path)  # fmt: skip
    assert base.returncode == 0, base.stderr[-3000:]
    base_report = json.loads((tmp_path / "ev_base" / "eval.json").read_text())
    assert [s["name"] for s in base_report["sets"]] == ["arithmetic-test", "math-500"]
    assert len(base_report["sets"][1]["data"]["sha256"]) == 64

    cmp = run_cli("eval", "--compare", str(tmp_path / "ev_base"), str(tmp_path / "ev_run"),
                  "--out", str(tmp_path / "cmp"), cwd=tmp_path)  # fmt: skip
    assert cmp.returncode == 0, cmp.stderr[-3000:]
    compared = (tmp_path / "cmp" / "compare.md").read_text()
    a = base_report["metrics"]["eval/arithmetic-test/score"]
    b = report["metrics"]["eval/arithmetic-test/score"]
    shown = f"| arithmetic-test | {100 * a:.1f} | {100 * b:.1f} | {100 * (b - a):+.1f} |"
    assert shown in compared  # percentages, as papers print them
    assert "| math-500 |" in compared  # only in A: shown with a dash for B
    assert "prompt_version differs" in cmp.stdout  # different prompt settings are flagged
    assert "arithmetic-test: k 1 vs 4" in cmp.stdout
    assert compared.startswith(f"# A = {tmp_path / 'ev_base'} (")  # named by directory
