"""cgrpo report: figures (checked through their matplotlib objects: axes, labels, ticks,
lines), the summary in each metric's direction, report.html and report.md."""

import json

import pytest

from tests.helpers import run_cli

pytest.importorskip("matplotlib")


def write_run(root, name, rows, partial_last_line=False, critic=None):
    run = root / name
    run.mkdir(parents=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if partial_last_line:
        text += '{"step": 99, "reward/ini'  # the run is writing this line right now
    (run / "metrics.jsonl").write_text(text)
    if critic:
        (run / "recipe.yaml").write_text(f"critic:\n  name: {critic}\n  options: {{}}\n")
    return run


def rows(n, reward0, refine=True):
    out = []
    for step in range(1, n + 1):
        row = {
            "step": step,
            "reward/initial_mean": reward0 + 0.1 * step,
            "loss/total": 1.0 / step,
            "advantage/zero_groups_share": 1.0 / step,
            "time/sample": 0.5,
            "time/update": 0.25,
            "time/step": 0.75 + 0.25 * (step == 1),
        }
        if refine:
            row |= {"refine/success_rate": 0.2 * step, "critique/cost": 0.001}
        out.append(row)
    return out


def figure(runs, panel_name, smoothing=0.0, only=None):
    from cgrpo.report import draw, plan

    drawn, _ = plan(runs, only)
    panel, metrics = next((p, m) for p, m in drawn if p.name == panel_name)
    return draw(panel, metrics, runs, smoothing)


def run_of(name, rows_, critic=None):
    from cgrpo.report import Run

    return Run(name, None, rows_, critic)


def test_two_runs_overlay_and_the_summary_matches_the_metrics(tmp_path):
    grpo = write_run(tmp_path, "grpo", rows(4, 0.1, refine=False))
    cgrpo = write_run(tmp_path, "cgrpo", rows(3, 0.2), partial_last_line=True)
    out = run_cli("report", str(grpo), str(cgrpo), "--out", str(tmp_path / "rep"))
    assert out.returncode == 0, out.stderr
    rep = tmp_path / "rep"
    names = {p.stem for p in rep.glob("*.png")}
    # panels with data only: no eval, entropy, shaping, mismatch figures
    assert names == {
        "reward",
        "refinement",
        "zero_advantage",
        "critic",
        "time",
        "persistent_failures",
    }
    assert "not drawn: Evaluation: no run logged eval/... (evaluation is off" in out.stdout
    md = (rep / "report.md").read_text()
    cells = {}
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| metric"):
            metric, statistic, *values = (c.strip() for c in line.strip("|").split("|"))
            cells[metric, statistic] = values  # columns: grpo, cgrpo
    assert cells["step", "last"] == ["4", "3"]  # the half-written line is not a step
    assert float(cells["reward/initial_mean", "final"][1]) == pytest.approx(0.2 + 0.3)
    assert float(cells["refine/success_rate", "best (max)"][1]) == pytest.approx(0.6)
    assert cells["refine/success_rate", "final"][0] == "-"  # GRPO has no refinements
    # lower is better: the best share of zero-advantage groups is the minimum, 1/4
    assert float(cells["advantage/zero_groups_share", "best (min)"][0]) == 0.25
    # an RL loss has no better direction: final, min and max, plainly
    assert float(cells["loss/total", "max"][0]) == 1.0
    assert float(cells["loss/total", "min"][0]) == 0.25
    assert ("loss/total", "best (max)") not in cells
    # seconds: the mean, (1.0 + 0.75 * 3) / 4 = 0.8125, not a "best" step
    assert float(cells["time/step", "mean"][0]) == pytest.approx(0.8125)
    html = (rep / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(names)  # self-contained
    assert "Not drawn:" in html and "grpo" in html and "cgrpo" in html


def test_every_axis_is_labelled_with_one_quantity_and_integer_step_ticks():
    run = run_of("a", [{"step": s, "clip/fraction": 0.01 * s, "update/grad_norm": 10.0 / s}
                       for s in range(1, 8)])  # fmt: skip
    fig = figure([run], "update")
    assert [ax.get_title() for ax in fig.axes] == ["clip/fraction", "update/grad_norm"]
    assert [ax.get_ylabel() for ax in fig.axes] == ["share of tokens clipped",
                                                    "gradient norm (L2)"]  # fmt: skip
    assert fig._suptitle.get_text() == "Update health: a"  # no KL named: none was logged
    for ax in fig.axes:
        assert ax.get_xlabel() == "step"
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 7]
        assert ticks and all(float(t).is_integer() for t in ticks)
        assert ax.get_ylim()[0] == 0  # non-negative quantities start at 0


def test_smoothing_draws_the_raw_curve_faint_behind_the_smoothed_one():
    run = run_of("a", [{"step": s, "reward/initial_mean": s % 2} for s in range(1, 11)])
    (raw_only,) = figure([run], "reward", smoothing=0.0).axes[0].get_lines()
    assert list(raw_only.get_ydata()) == [1, 0] * 5
    raw, smoothed = figure([run], "reward", smoothing=0.5).axes[0].get_lines()
    assert raw.get_alpha() < 0.5 and smoothed.get_alpha() is None
    assert list(raw.get_ydata()) == [1, 0] * 5
    assert smoothed.get_ydata()[1] == pytest.approx(1 / 3)  # ema worked out below


def test_ema_is_debiased_like_tensorboards():
    from cgrpo.report import ema

    # factor 0.5 on [1, 3]: s1 = 0.5, / (1 - 0.5) = 1; s2 = 0.25 + 1.5 = 1.75, / 0.75 = 7/3
    assert ema([1.0, 3.0], 0.5) == pytest.approx([1.0, 7 / 3])
    # [1, 0]: s2 = 0.25 / 0.75 = 1/3
    assert ema([1.0, 0.0], 0.5) == pytest.approx([1.0, 1 / 3])
    assert ema([1.0, 2.0], 0.0) == [1.0, 2.0]


def test_several_runs_are_told_apart_by_colour_one_metric_per_axis():
    a = run_of("grpo", rows(5, 0.1))
    b = run_of("cgrpo", rows(5, 0.3))
    fig = figure([a, b], "refinement")
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["grpo", "cgrpo"]
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert len(lines) == 2  # one metric (refine/success_rate), two runs, no smoothing
    assert lines[0].get_color() != lines[1].get_color()
    assert all(": " not in (line.get_label() or "") for line in lines)  # no "run: metric"
    two = run_of("x", [{"step": s, "refine/success_rate": 0.1, "groups/rescued_share": 0.2}
                       for s in (1, 2)])  # fmt: skip
    fig = figure([two, run_of("y", two.rows)], "refinement")
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == [
        "refine/success_rate", "groups/rescued_share"]  # fmt: skip
    assert all(ax.get_legend() is None for ax in fig.axes)  # the figure's legend of runs
    (ax,) = figure([two], "refinement").axes  # one run: one axis per quantity
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["refine/success_rate", "groups/rescued_share"]
    assert ax.get_ylabel() == "share (0-1)"


def test_evaluation_is_one_small_multiple_per_benchmark_without_smoothing():
    metrics = {"eval/avg/score": 0.3, "eval/math-500/score": 0.4, "eval/aime24/score": 0.1,
               "eval/aime24/avg@16": 0.1, "eval/math-500/accuracy": 0.4,
               "eval/math-500/problems": 500.0}  # fmt: skip
    run = run_of("a", [{"step": s, **metrics} for s in (0, 10, 20)])
    fig = figure([run], "eval", smoothing=0.9)
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == [
        "average of all benchmarks", "aime24", "math-500"]  # fmt: skip
    for ax in fig.axes:
        assert ax.get_ylabel() == "score (share correct)"
        (line,) = ax.get_lines()  # the score only, unsmoothed: no faint raw line
        assert line.get_marker() == "o"
    held_out = run_of("b", [{"step": s, "eval/accuracy": 0.5, "eval/pass@4": 0.7,
                             "eval/avg@4": 0.5, "eval/maj@4": 0.6, "eval/score": 0.5,
                             "eval/truncated_share": 0.1} for s in (0, 10)])  # fmt: skip
    (ax,) = figure([held_out], "eval").axes
    assert ax.get_title() == "held-out problems"
    # the score repeats avg@4 and truncated_share is another quantity: not drawn here
    assert sorted(line.get_label() for line in ax.get_lines()) == [
        "eval/accuracy", "eval/avg@4", "eval/maj@4", "eval/pass@4"]  # fmt: skip


def test_stage_times_are_stacked_per_run_in_step_order():
    a = run_of("grpo", rows(4, 0.1))
    b = run_of("cgrpo", [r | {"time/refine": 0.3} for r in rows(4, 0.1)])
    fig = figure([a, b], "time")
    assert [ax.get_title() for ax in fig.axes] == ["grpo", "cgrpo"]
    assert [len(ax.collections) for ax in fig.axes] == [2, 3]  # sample, update (+ refine)
    assert fig.axes[0].get_shared_y_axes().joined(fig.axes[0], fig.axes[1])
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["sample", "refine", "update"]  # every run's stages, in a step's order
    tops = fig.axes[1].collections[-1].get_paths()[0].vertices[:, 1]
    assert max(tops) == pytest.approx(0.5 + 0.3 + 0.25)  # stacked: sample + refine + update
    # one y scale for both, up to the taller stack: cgrpo's is not cut off by grpo's
    assert fig.axes[0].get_ylim() == fig.axes[1].get_ylim() == pytest.approx((0, 1.05 * 1.05))


def test_a_rule_based_critic_has_no_critic_panel_and_the_report_says_why():
    from cgrpo.report import plan

    zero = [{"step": s, "critique/cost": 0.0, "critique/latency_s_mean": 0.0,
             "critique/failed": 0.0, "reward/initial_mean": 0.5} for s in (1, 2)]  # fmt: skip
    drawn, left = plan([run_of("gt", zero, critic="ground_truth")])
    assert "critic" not in [p.name for p, _ in drawn]
    (line,) = [x for x in left if x.startswith("Critic")]
    assert "0 at every step" in line and "critic ground_truth: rule-based" in line
    api = [r | {"critique/cost": 0.01, "critique/latency_s_mean": 1.5} for r in zero]
    drawn, left = plan([run_of("api", api, critic="openai")])
    (metrics,) = [m for p, m in drawn if p.name == "critic"]
    assert metrics == ["critique/cost", "critique/latency_s_mean"]  # no failures: left out
    assert any("critique/failed 0 at every step" in x for x in left)
    fig = figure([run_of("api", api)], "critic", smoothing=0.8)
    assert [ax.get_ylabel() for ax in fig.axes] == ["USD", "seconds"]
    assert fig.axes[0].get_title() == "critique/cost (cumulative)"
    (cost,) = fig.axes[0].get_lines()  # a running sum, not smoothed: no faint raw line
    assert list(cost.get_ydata()) == [0.01, 0.02]


def test_runs_with_the_same_directory_name_get_distinct_labels(tmp_path):
    from cgrpo.report import read_run
    from cgrpo.report.reading import distinct_names

    runs = [read_run(write_run(tmp_path / d, "quickstart", rows(2, 0.1))) for d in "ab"]
    distinct_names(runs)
    assert [r.name for r in runs] == ["a/quickstart", "b/quickstart"]


def test_custom_metrics_smoothing_and_errors(tmp_path):
    run = write_run(tmp_path, "a", rows(5, 0.0))
    out = run_cli("report", str(run), "--metrics", "loss/total,nope/x", "--smooth", "0.5")
    assert out.returncode == 0, out.stderr
    assert {p.name for p in (run / "report").glob("*.png")} == {"loss_total.png"}
    assert "not drawn: nope/x: no run logged nope/x" in out.stdout
    bad = run_cli("report", str(run), "--smooth", "3")
    assert bad.returncode == 2 and "--smooth 3: give a factor from 0" in bad.stderr
    missing = run_cli("report", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "no metrics.jsonl" in missing.stderr


def test_log_prob_differences_are_drawn_on_a_log_scale():
    run = run_of("a", [{"step": s, "sampler/logprob_diff_max": 1e-2,
                        "sampler/logprob_diff_mean": 1e-5} for s in (1, 2, 3)])  # fmt: skip
    (ax,) = figure([run], "mismatch").axes
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "log-prob difference (nats)"


def test_a_metric_at_zero_throughout_is_left_out_with_the_reason():
    from cgrpo.report import plan

    run = run_of("a", [{"step": s, "clip/fraction": 0.0, "update/grad_norm": 1.0}
                       for s in (1, 2)])  # fmt: skip
    drawn, left = plan([run])
    assert dict((p.name, m) for p, m in drawn)["update"] == ["update/grad_norm"]
    assert any(
        x.startswith("Update health: clip/fraction 0 at every step (nothing was") for x in left
    )


def test_the_evaluation_panel_shows_each_benchmarks_score_not_every_metric():
    from cgrpo.report import PANELS, expand

    panel = next(p for p in PANELS if p.name == "eval")
    benchmarks = {f"eval/{b}/{m}" for b in ("aime24", "math-500", "avg")
                  for m in ("score", "accuracy", "avg@16", "problems")}  # fmt: skip
    assert expand(panel, benchmarks) == ["eval/aime24/score", "eval/avg/score",
                                         "eval/math-500/score"]  # fmt: skip
    held_out = {"eval/accuracy", "eval/pass@4", "eval/problems", "eval/score"}
    assert expand(panel, held_out) == ["eval/accuracy", "eval/pass@4"]
    time = next(p for p in PANELS if p.name == "time")
    assert expand(time, {"time/sample", "time/eval", "time/eval_verify"}) == ["time/sample"]


def test_the_stage_panel_stacks_stages_not_their_totals():
    """time/rollout is the rollout's wall time, which its stages split: stacking it with
    them would count the rollout twice."""
    from cgrpo.report import PANELS, expand

    time_panel = next(p for p in PANELS if p.name == "time")
    keys = {"time/sample", "time/refine", "time/update", "time/rollout", "time/step"}
    assert expand(time_panel, keys) == ["time/refine", "time/sample", "time/update"]


def test_entropy_and_length_are_drawn_per_kind_with_demonstrations(tmp_path):
    """Issue 28: report.html shows entropy and response length per kind (initial,
    refinement, demonstration), one line each on one labelled axis."""
    data = [
        r
        | {
            "entropy/initial": 0.5,
            "entropy/refinement": 0.3,
            "entropy/demonstration": 0.1,
            "length/initial_mean": 30.0,
            "length/refinement_mean": 20.0,
            "length/demonstration_mean": 40.0,
        }
        for r in rows(4, 0.1)
    ]
    run = write_run(tmp_path, "luffy", data)
    out = run_cli("report", str(run), "--out", str(tmp_path / "rep"))
    assert out.returncode == 0, out.stderr
    html = (tmp_path / "rep" / "report.html").read_text()
    assert '<img alt="entropy"' in html and '<img alt="length"' in html
    for panel in ("entropy", "length"):
        fig = figure([run_of("luffy", data)], panel)
        labels = {line.get_label() for ax in fig.axes for line in ax.get_lines()}
        kinds = {"initial", "refinement", "demonstration"}
        assert all(any(k in label for label in labels) for k in kinds), labels
