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
