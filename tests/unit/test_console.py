"""The console: a resumed run's progress starts at its step; logged warnings are shown,
a warning repeated from one place only a few times; console lines reach train.log."""

import logging

from cgrpo.train.metrics import Console, ConsoleLogHandler


def test_resumed_progress_starts_at_the_resumed_step(capsys):
    plain = Console(10, "plain")
    plain.resume_at(6)
    plain.step(7, {"time/step": 2.0})
    line = capsys.readouterr().out
    assert "step 7/10" in line and "eta 6s" in line  # 3 steps left at 2 s, from step 7 on
    bar = Console(10, "rich")
    try:
        bar.resume_at(6)
        assert bar._progress.tasks[0].completed == 6
    finally:
        bar.close()


def test_warnings_reach_the_console_and_repeats_are_capped(capsys):
    console = Console(1, "plain")
    handler = ConsoleLogHandler(console, repeats=2)
    log = logging.getLogger("cgrpo.test_console")
    log.addHandler(handler)
    log.propagate = False
    try:
        for i in range(5):
            log.warning("critic failed on request %d", i)
        log.info("only in train.log")
        log.error("also only in train.log", extra={"console": False})
        console.message("cgrpo: a console line")  # logged, but not shown twice
    finally:
        log.removeHandler(handler)
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "cgrpo: warning: critic failed on request 0",
        "cgrpo: warning: critic failed on request 1 (further warnings like this one go to "
        "train.log only)",
        "cgrpo: a console line",
    ]


def test_rich_console_prints_brackets_as_they_are():
    import io

    from rich.console import Console as RichConsole

    buffer = io.StringIO()
    console = Console(1, "rich")
    console._progress.stop()
    console._progress.live.console = RichConsole(file=buffer, width=200)
    console.message("pip install 'cgrpo[data]'")
    assert "cgrpo[data]" in buffer.getvalue()


def test_alerts_name_what_is_off():
    from cgrpo.train.metrics import step_alerts

    assert step_alerts({"loss/total": 0.1, "sampler/logprob_diff_mean": 0.01}) == []
    alerts = step_alerts(
        {
            "update/skipped_nonfinite": 1.0,
            "sampler/logprob_diff_mean": 0.2,
            "sampler/logprob_diff_max": 3.0,
            "critique/failed": 2.0,
        },
        spent_usd=0.95,
        budget_usd=1.0,
    )
    assert [a.split()[0] for a in alerts] == ["non-finite", "sampler", "2", "critic"]
    assert "95%" in alerts[-1]


def test_plain_lines_every_n_steps_and_whenever_something_is_off(capsys):
    console = Console(7, "plain", log_every=3)
    for step in range(1, 8):
        metrics = {"loss/total": 0.5, "critique/cost": 0.001}
        if step == 4:
            metrics["critique/failed"] = 1.0
        if step == 6:
            metrics["eval/accuracy"] = 0.25
        console.step(step, metrics)
    out = capsys.readouterr().out
    steps = [line.split()[1] for line in out.splitlines() if line.startswith("step ")]
    assert steps == ["3/7", "4/7", "6/7", "7/7"]  # every 3rd, the warning, the last
    assert "  ! 1 critiques failed" in out
    assert "eval (RL step 6): accuracy 0.250" in out
    assert "critic $0.0070" in out.splitlines()[-1]  # spend is cumulative


def test_sparkline_scales_between_min_and_max():
    from cgrpo.train.console import sparkline

    # 0 -> lowest; 0.5 * 7 = 3.5, rounded half up -> the 5th block; 1 -> the highest
    assert sparkline([0.0, 0.5, 1.0]) == "▁▅█"
    assert sparkline([2.0, 2.0]) == "▁▁"  # flat: no rise to show
    assert sparkline([3.0, 1.0], ticks="_#") == "#_"


def test_the_console_shows_the_trend_of_reward_and_step_time(capsys):
    import io

    from rich.console import Console as RichConsole

    plain = Console(5, "plain")
    for step, (reward, secs) in enumerate([(0.1, 2.0), (0.3, 2.0), (0.2, 4.0)], 1):
        plain.step(step, {"reward/initial_mean": reward, "time/step": secs})
    lines = capsys.readouterr().out.splitlines()
    assert "|" not in lines[0]  # one point is no trend yet
    # the last line: reward 0.1, 0.3, 0.2 -> low, high, (0.1/0.2 * 7 = 3.5 -> 4) middle
    low, mid, high = (plain.trend.ticks[i] for i in (0, 4, 7))
    assert lines[-1].endswith(
        f"| last 3 steps: reward {low}{high}{mid} (0.1 to 0.3)  s/step {low}{low}{high} (2 to 4)"
    )
    rich = Console(5, "rich")
    try:
        rich.step(1, {"reward/initial_mean": 0.0, "time/step": 1.0})
        rich.step(2, {"reward/initial_mean": 1.0, "time/step": 1.0})
        buffer = io.StringIO()
        RichConsole(file=buffer, width=120).print(*rich._progress.lines)
        assert "last 2 steps: reward ▁█ (0 to 1)  s/step ▁▁ (1 to 1)" in buffer.getvalue()
    finally:
        rich.close()
