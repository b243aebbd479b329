"""cgrpo report: figures, report.html and report.md from runs' metrics.jsonl."""

import json

import pytest

from tests.helpers import run_cli

pytest.importorskip("matplotlib")


def write_run(root, name, rows, partial_last_line=False):
    run = root / name
    run.mkdir(parents=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if partial_last_line:
        text += '{"step": 99, "reward/ini'  # the run is writing this line right now
    (run / "metrics.jsonl").write_text(text)
    return run


def rows(n, reward0, refine=True):
    out = []
    for step in range(1, n + 1):
        row = {
            "step": step,
            "reward/initial_mean": reward0 + 0.1 * step,
            "loss/total": 1.0 / step,
            "time/sample": 0.5,
            "time/update": 0.25,
            "time/step": 0.75,
        }
        if refine:
            row |= {"refine/success_rate": 0.2 * step, "critique/cost": 0.001}
        out.append(row)
    return out


def test_two_runs_overlay_and_the_summary_matches_the_metrics(tmp_path):
    grpo = write_run(tmp_path, "grpo", rows(4, 0.1, refine=False))
    cgrpo = write_run(tmp_path, "cgrpo", rows(3, 0.2), partial_last_line=True)
    out = run_cli("report", str(grpo), str(cgrpo), "--out", str(tmp_path / "rep"))
    assert out.returncode == 0, out.stderr
    rep = tmp_path / "rep"
    names = {p.stem for p in rep.glob("*.png")}
    # panels with data only: no eval, entropy, shaping, mismatch figures
    assert names == {"reward", "refinement", "critic", "time"}
    from matplotlib.image import imread

    for png in rep.glob("*.png"):
        pixels = imread(png)
        assert pixels.shape[0] > 100 and pixels.std() > 0.01, png  # decodes, not blank
    md = (rep / "report.md").read_text()
    table = [line.split(" | ") for line in md.splitlines() if line.startswith("| cgrpo")]
    header = next(line for line in md.splitlines() if line.startswith("| run"))
    columns = [c.strip(" |") for c in header.split(" | ")]
    values = dict(zip(columns, [c.strip(" |") for c in table[0]], strict=True))
    assert values["steps"] == "3"  # the half-written line is not a step
    assert float(values["reward/initial_mean final"]) == pytest.approx(0.2 + 0.3)
    assert float(values["refine/success_rate best"]) == pytest.approx(0.6)
    html = (rep / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(names)  # self-contained
    assert "grpo" in html and "cgrpo" in html


def test_custom_metrics_smoothing_and_errors(tmp_path):
    run = write_run(tmp_path, "a", rows(5, 0.0))
    out = run_cli("report", str(run), "--metrics", "loss/total,nope/x", "--smooth", "2")
    assert out.returncode == 0, out.stderr
    assert {p.name for p in (run / "report").glob("*.png")} == {"loss_total.png"}
    missing = run_cli("report", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "no metrics.jsonl" in missing.stderr


def test_smooth_is_a_trailing_mean():
    from cgrpo.report import smooth

    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert smooth([1.0, 2.0], 1) == [1.0, 2.0]


def test_the_evaluation_panel_shows_each_benchmarks_score_not_every_metric():
    from cgrpo.report import PANELS, expand

    panel = next(p for p in PANELS if p.name == "eval")
    benchmarks = {f"eval/{b}/{m}" for b in ("aime24", "math-500", "avg")
                  for m in ("score", "accuracy", "avg@16", "problems")}  # fmt: skip
    assert expand(panel, benchmarks) == ["eval/aime24/score", "eval/avg/score",
                                         "eval/math-500/score"]  # fmt: skip
    held_out = {"eval/accuracy", "eval/pass@4", "eval/problems", "eval/score"}
    assert expand(panel, held_out) == ["eval/accuracy", "eval/pass@4", "eval/score"]
    time = next(p for p in PANELS if p.name == "time")
    assert expand(time, {"time/sample", "time/eval", "time/eval_verify"}) == ["time/sample"]


def test_the_stage_panel_stacks_stages_not_their_totals():
    """time/rollout is the rollout's wall time, which its stages split: stacking it with
    them would count the rollout twice."""
    from cgrpo.report import PANELS, expand

    time_panel = next(p for p in PANELS if p.name == "time")
    keys = {"time/sample", "time/refine", "time/update", "time/rollout", "time/step"}
    assert expand(time_panel, keys) == ["time/refine", "time/sample", "time/update"]
