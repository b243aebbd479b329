"""The authors' data format end to end through the real CLI: a generated verl parquet
passes ``cgrpo check`` and trains a CPU recipe given only its path and ``format: verl``
(warm-up demonstrations from ``target``, step metrics per ``data_source``); a row without
``reward_model.ground_truth`` is exit 2 naming file:row and the path; a five-source
validation file scored by ``cgrpo eval --benchmarks verl=FILE``, one metric set per
source with AMC and AIME repeats as samples, and their macro average."""

from __future__ import annotations

import json

import pytest

from tests.helpers import REPO, run_cli
from tests.verl_files import training_rows, validation_rows, write_parquet

pytestmark = pytest.mark.slow
QUICKSTART = str(REPO / "recipes" / "quickstart-cpu.yaml")


def recipe(tmp_path, data):
    return [QUICKSTART, "data.task=parquet", f"data.task.options.path={data}",
            "data.task.options.format=verl", f"model.path={tmp_path / 'tiny'}"]  # fmt: skip


def flat(text: str) -> str:
    """Without whitespace: the console wraps long lines anywhere, a tmp path included."""
    return "".join(text.split())


def test_verl_parquet_checks_trains_and_evaluates_per_source(tmp_path):
    train = write_parquet(tmp_path / "train.parquet", training_rows(48))
    rows = training_rows(48)
    rows[2]["reward_model"]["ground_truth"] = None
    bad = write_parquet(tmp_path / "bad.parquet", rows)
    valid = write_parquet(tmp_path / "valid.parquet", validation_rows())

    checked = run_cli("check", *recipe(tmp_path, train), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-2000:]
    said = "48 usable rows read; per source: openr1_easy 24, openr1_hard 24"
    assert flat(said) in flat(checked.stdout)
    refused = run_cli("check", *recipe(tmp_path, bad), cwd=tmp_path)
    assert refused.returncode == 2
    said = f"{bad}:3: missing field 'reward_model.ground_truth' (answer); it is null"
    assert flat(said) in flat(refused.stdout)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.parquet", "train.parquet",
                                                          "valid.parquet"]  # fmt: skip

    out = run_cli("run", *recipe(tmp_path, train), "sft.steps=2", "train.steps=2",
                  "algorithm.prompts_per_step=4", "algorithm.micro_batch_size=16",
                  "run.console=plain", f"run.output_dir={tmp_path / 'runs'}",
                  cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / "quickstart"
    assert "sft 2/2" in out.stdout  # the warm-up read its demonstrations from target
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"reward/openr1_easy/initial_mean", "reward/openr1_hard/group_pass_rate"} <= {
        k for m in steps for k in m
    }

    ev = run_cli("eval", str(run), "--benchmarks", f"verl={valid}", "--out",
                 str(tmp_path / "ev"), cwd=tmp_path)  # fmt: skip
    assert ev.returncode == 0, ev.stderr[-3000:]
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    shown = [(s["name"], s["problems"], s["sampling"]["k"], s["data"]["repeats"])
             for s in report["sets"]]  # fmt: skip
    assert shown == [("verl/olympiad_bench", 3, 1, 1), ("verl/math", 4, 1, 1),
                     ("verl/amc", 3, 4, 4), ("verl/minerva", 2, 1, 1),
                     ("verl/aime", 2, 8, 8)]  # fmt: skip
    m = report["metrics"]
    scores = [m[f"eval/{s['name']}/score"] for s in report["sets"]]
    assert m["eval/verl/score"] == pytest.approx(sum(scores) / 5) == m["eval/avg/score"]
    assert m["eval/verl/aime/score"] == m["eval/verl/aime/avg@8"]
    generations = (tmp_path / "ev" / "generations.jsonl").read_text().splitlines()
    assert len(generations) == 14 + 3 * 4 + 2 * 8  # greedy per problem + the repeats' samples
    aime = [json.loads(g) for g in generations if '"verl/aime"' in g]
    sampled = [g["correct"] for g in aime if g["mode"] != "greedy"]
    assert m["eval/verl/aime/avg@8"] == sum(sampled) / 16
