"""``cgrpo run`` end to end through the real CLI on a tiny model (a shortened quickstart)."""

import json
import math

import pytest

from tests.helpers import REPO, run_cli

QUICKSTART = str(REPO / "recipes" / "quickstart-cpu.yaml")
SHORT = [
    "sft.steps=10",
    "train.steps=3",
    "train.save_every=2",
    "data.task.options.size=50",
    "algorithm.prompts_per_step=4",
    "algorithm.micro_batch_size=16",
    "run.console=plain",
]

pytestmark = pytest.mark.slow

REQUIRED_METRICS = {
    "reward/initial_mean",
    "refine/success_rate",
    "groups/all_failed_share",
    "advantage/mean",
    "loss/policy",
    "loss/total",
    "entropy/initial",
    "length/initial_mean",
    "update/grad_norm",
    "update/lr",
    "time/sample",
    "time/verify",
    "time/update",
    "time/step",
    "throughput/sampled_tokens_per_s",
    "clip/fraction",
}


def test_shortened_quickstart_runs_and_leaves_a_complete_run_dir(tmp_path):
    out = run_cli(
        "run",
        QUICKSTART,
        *SHORT,
        f"model.path={tmp_path / 'tiny'}",
        f"run.output_dir={tmp_path / 'runs'}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "step 3/3" in out.stdout
    assert "creating a tiny random one there" in out.stdout  # said, not silent
    run = tmp_path / "runs" / "quickstart"
    assert (run / "recipe.yaml").is_file()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]
    missing = REQUIRED_METRICS - set(lines[0])
    assert not missing, missing
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert {s["kind"] for s in samples} <= {"initial", "refinement"}
    assert {"prompt_id", "response", "verdict", "reward", "advantage", "critique"} <= set(
        samples[0]
    )
    # the weights that sampled each sequence: one sync before step 1, one per update
    assert {(s["step"], s["weight_version"]) for s in samples} == {(1, 1), (2, 2), (3, 3)}
    # each step's rollout timeline: every group sampled, and time/rollout is its wall time
    steps = [json.loads(x) for x in (run / "timeline.jsonl").read_text().splitlines()]
    assert [t["step"] for t in steps] == [1, 2, 3]
    for t, m in zip(steps, lines, strict=True):
        assert {g for g, stage, *_ in t["spans"] if stage == "sample"} == {0, 1, 2, 3}
        assert max(end for _, _, _, end, _ in t["spans"]) <= 1e3 * m["time/rollout"] + 1
    from cgrpo.train.timeline import main as draw

    draw([str(run), "--step", "2", "--out", str(tmp_path / "t.png")])
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    assert len((run / "sft_metrics.jsonl").read_text().splitlines()) == 10
    assert "sft 10/10" in out.stdout and "eta" in out.stdout.split("sft 1/10")[1]
    log = (run / "train.log").read_text()  # what the console said, kept beside the run
    for said in ("creating a tiny random one there", "cgrpo: run directory", "cgrpo: done"):
        assert said in log, said

    # checkpoints: every save_every steps and at the end, loadable by plain transformers
    for step in (2, 3):
        ckpt = run / "checkpoints" / f"step-{step}"
        assert (ckpt / "manifest.json").is_file() and (ckpt / "trainer_state.pt").is_file()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "step-3")
    tok = AutoTokenizer.from_pretrained(run / "checkpoints" / "step-3")
    assert model.config.vocab_size == len(tok)

    again = run_cli(
        "run",
        QUICKSTART,
        *SHORT,
        f"model.path={tmp_path / 'tiny'}",
        f"run.output_dir={tmp_path / 'runs'}",
        cwd=tmp_path,
    )
    assert again.returncode == 2
    assert "already exists" in again.stderr and "run.overwrite=true" in again.stderr


def test_bad_data_file_fails_before_training_with_file_and_line(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "What is 1 + 1?", "answer": "2"}\n{"question": "x"}\n')
    out = run_cli(
        "run",
        QUICKSTART,
        *SHORT,
        f"model.path={tmp_path / 'tiny'}",
        f"run.output_dir={tmp_path / 'runs'}",
        "data.task.name=jsonl",
        f"data.task.options.path={data}",
        cwd=tmp_path,
    )
    assert out.returncode == 2  # as a bad recipe: before the model or the run directory
    assert f"{data}:2: missing field 'answer'" in out.stderr
    assert "bad_rows: skip" in out.stderr
    assert not (tmp_path / "tiny").exists() and not (tmp_path / "runs").exists()


def test_eval_keep_last_and_keep_best(tmp_path):
    out = run_cli(
        "run",
        QUICKSTART,
        *SHORT,
        "train.steps=4",
        "train.save_every=1",
        "train.keep_last=1",
        "train.keep_best=eval/accuracy",
        "eval.every=2",
        "eval.size=8",
        f"model.path={tmp_path / 'tiny'}",
        f"run.output_dir={tmp_path / 'runs'}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    run = tmp_path / "runs" / "quickstart"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = {m["step"]: m["eval/accuracy"] for m in lines if "eval/accuracy" in m}
    assert sorted(evals) == [0, 2, 4]  # step 0: before any RL step (eval.at_start)
    assert set(lines[0]) == {"step", "eval/accuracy", "eval/problems", "eval/length_mean",
                             "eval/truncated_share", "eval/score", "time/eval",
                             "time/eval_verify"}  # fmt: skip
    trained = {s: v for s, v in evals.items() if s > 0}
    best_step = max(trained, key=lambda s: (trained[s], -s))
    kept = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    assert kept == sorted({f"step-{best_step}", "step-4"})


OBSERVER = """
import json, os
from cgrpo import hookimpl

def _log(event, **data):
    with open(os.environ["OBSERVER_LOG"], "a") as fh:
        fh.write(json.dumps({"event": event, **data}) + "\\n")

@hookimpl
def on_run_start(run_dir, recipe):
    _log("start", run_dir=run_dir, steps=recipe["train"]["steps"])

@hookimpl
def on_step_end(step, metrics):
    _log("step", step=step, reward=metrics["reward/initial_mean"])

@hookimpl
def on_run_end(run_dir, status):
    _log("end", status=status)
"""


def test_observer_plugin_sees_start_steps_and_end(tmp_path):
    from tests.helpers import fake_distribution

    (tmp_path / "observer_plugin.py").write_text(OBSERVER)
    site = fake_distribution(tmp_path, "observer", {"observer": "observer_plugin"})
    log = tmp_path / "events.jsonl"
    out = run_cli(
        "run",
        QUICKSTART,
        *SHORT,
        f"model.path={tmp_path / 'tiny'}",
        f"run.output_dir={tmp_path / 'runs'}",
        cwd=tmp_path,
        paths=[site],
        env={"OBSERVER_LOG": str(log)},
    )
    assert out.returncode == 0, out.stderr
    events = [json.loads(x) for x in log.read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "step", "step", "step", "end"]
    assert events[0]["steps"] == 3 and events[-1]["status"] == "completed"


def test_prompts_over_the_limit_are_named_on_the_console_with_file_and_line(tmp_path):
    """Training and evaluation rows whose prompts do not fit are skipped, and the console
    says which (file:line), not only train.log; eval.task is evaluated whole (no eval.size
    cut) and the metrics say how many problems were evaluated."""
    row = '{{"question": "What is {a} + {b}?", "answer": "{c}"}}\n'
    long = '{"question": "' + "very long question " * 40 + '", "answer": "1"}\n'
    data = tmp_path / "train.jsonl"
    data.write_text("".join(row.format(a=i, b=1, c=i + 1) for i in range(4)) + long)
    evals = tmp_path / "eval.jsonl"
    evals.write_text(long + "".join(row.format(a=i, b=2, c=i + 2) for i in range(70)))
    out = run_cli(
        "run",
        QUICKSTART,
        "sft.steps=0",
        "train.steps=1",
        "algorithm.prompts_per_step=2",
        "algorithm.micro_batch_size=16",
        "run.console=plain",
        "data.task.name=jsonl",
        f"data.task.options.path={data}",
        "eval.every=1",
        f"eval.task={{name: jsonl, options: {{path: {evals}}}}}",
        f"model.path={tmp_path / 'tiny'}",
        f"run.output_dir={tmp_path / 'runs'}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "cgrpo: warning: data.task: 1 of 5 problems" in out.stdout
    assert f"{data}:5" in out.stdout and f"{evals}:1" in out.stdout
    lines = (tmp_path / "runs" / "quickstart" / "metrics.jsonl").read_text().splitlines()
    metrics = json.loads(lines[-1])
    assert metrics["eval/problems"] == 70  # all that fit, not the hold-out default of 64


def test_the_live_view_on_a_terminal(tmp_path):
    """Under a pseudo-terminal `run.console: auto` draws the rich view: the bar, the key
    numbers of the step and the latest evaluation."""
    import os
    import subprocess
    import sys

    leader, follower = os.openpty()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    cmd = [
        sys.executable, "-m", "cgrpo", "run", QUICKSTART, *SHORT[:-1], "run.console=auto",
        "eval.every=2", "eval.size=8", f"model.path={tmp_path / 'tiny'}",
        f"run.output_dir={tmp_path / 'runs'}",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdin=follower, stdout=follower, stderr=subprocess.PIPE, env=env, cwd=tmp_path
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-3000:]
    screen = b"".join(chunks).decode(errors="replace")
    assert "\x1b[" in screen  # drawn with terminal control sequences, not plain lines
    for shown in ("step 3/3", "reward", "refine_ok", "grad", "tok/s", "eval (RL step 2): accuracy"):
        assert shown in screen, shown


def test_report_of_two_real_runs_matches_their_metrics(tmp_path):
    """`cgrpo report` on two quickstart-scale runs (Critique-GRPO and plain GRPO): the
    figures decode and are not blank, and the summary's numbers are metrics.jsonl's."""
    pytest.importorskip("matplotlib")
    base = [*SHORT[:-2], "sft.steps=2", "train.steps=2", f"model.path={tmp_path / 'tiny'}",
            f"run.output_dir={tmp_path / 'runs'}"]  # fmt: skip
    for name, extra in (
        ("critique-grpo", []),
        ("grpo", ["algorithm.refinements_per_prompt=0", "algorithm.samples_per_prompt=8"]),
    ):
        out = run_cli("run", QUICKSTART, *base, f"run.name={name}", *extra, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
    runs = [tmp_path / "runs" / n for n in ("critique-grpo", "grpo")]
    rep = run_cli("report", *map(str, runs), "--out", str(tmp_path / "rep"), cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    from matplotlib.image import imread

    pngs = sorted((tmp_path / "rep").glob("*.png"))
    assert {"reward", "refinement", "time"} <= {p.stem for p in pngs}
    for png in pngs:
        assert imread(png).std() > 0.01, png
    md = (tmp_path / "rep" / "report.md").read_text().splitlines()
    header = [c.strip() for c in md[2].strip("|").split("|")]
    cells = {}
    for line in md[4:]:
        if line.startswith("| "):
            row = [c.strip() for c in line.strip("|").split("|")]
            cells[row[0], row[1]] = dict(zip(header[2:], row[2:], strict=True))
    for run in runs:
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        final = metrics[-1]["reward/initial_mean"]
        shown = cells["reward/initial_mean", "final"][run.name]
        assert float(shown) == pytest.approx(final, abs=5e-5)
        top = max(m["loss/total"] for m in metrics)  # a loss has no better direction
        assert float(cells["loss/total", "max"][run.name]) == pytest.approx(top, rel=1e-3, abs=1e-4)
    assert (tmp_path / "rep" / "report.html").stat().st_size > 10_000


def test_eval_with_k_samples_and_verification_workers_leave_training_untouched(tmp_path):
    """eval.k > 1 adds pass@k, avg@k and maj@k; its sampling is seeded apart from
    training, so the training numbers are those of the same run with greedy eval only. The
    sampled run also verifies in 2 worker processes (10 prompts x 7 samples: 70 responses a
    step, over the pool's 64), which gives the same verdicts as verifying inline."""
    base = [*SHORT[:-3], "algorithm.prompts_per_step=10", "algorithm.micro_batch_size=40",
            "run.console=plain", "train.steps=2", "sft.steps=3", "eval.every=1",
            "eval.size=6", f"model.path={tmp_path / 'tiny'}",
            f"run.output_dir={tmp_path / 'runs'}"]  # fmt: skip
    lines = {}
    for name, k, workers in (("greedy", 1, 1), ("sampled", 4, 2)):
        out = run_cli("run", QUICKSTART, *base, f"run.name={name}", f"eval.k={k}",
                      f"run.verify_workers={workers}", cwd=tmp_path)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        text = (tmp_path / "runs" / name / "metrics.jsonl").read_text()
        lines[name] = [json.loads(x) for x in text.splitlines()]
    logs = {n: (tmp_path / "runs" / n / "train.log").read_text() for n in lines}
    assert "verifying math responses in 2 worker processes" in logs["sampled"]
    assert "worker processes" not in logs["greedy"]
    sampled = lines["sampled"]
    assert [m["step"] for m in sampled] == [0, 1, 2]
    for m in sampled:
        assert m["eval/pass@4"] >= m["eval/avg@4"] >= 0.0 and 0.0 <= m["eval/maj@4"] <= 1.0
    for a, b in zip(lines["greedy"], sampled, strict=True):
        for key in ("reward/initial_mean", "loss/total", "eval/accuracy"):
            assert a.get(key) == b.get(key), key


def test_a_reward_from_a_python_file_weighted_with_math_end_to_end(tmp_path):
    """verifier: weighted (math + a format reward from a file): the rewards the run logs
    are the weighted sums."""
    rewards = tmp_path / "my_rewards.py"
    rewards.write_text(
        "def has_digit(response, problem):\n    return any(c.isdigit() for c in response)\n"
    )
    verifier = (
        "verifier={name: weighted, options: {parts: [{name: math}, {name: python, weight: 0.5, "
        f"options: {{path: {rewards}, function: has_digit}}}}]}}}}"
    )
    out = run_cli(
        "run", QUICKSTART, *SHORT[:-2], "train.steps=2", "sft.steps=3", verifier,
        f"model.path={tmp_path / 'tiny'}", f"run.output_dir={tmp_path / 'runs'}", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / "quickstart"
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    seen = {s["reward"] for s in samples}
    assert seen <= {0.0, 0.5, 1.0, 1.5} and seen & {0.5, 1.5}, seen
    for s in samples:  # 0.5 exactly when the response has a digit, +1 when it is right
        digit = any(c.isdigit() for c in s["response"])
        assert s["reward"] - 0.5 * digit in (0.0, 1.0), s


def test_a_warm_up_only_run_writes_a_checkpoint_to_start_rl_from(tmp_path):
    """train.steps: 0 with sft.steps > 0 runs only the warm-up and saves it as step-0 (it
    was rejected before; warm-up stages needed an RL step at lr 1e-12)."""
    common = [
        "run.console=plain",
        "data.task.options.size=30",
        f"run.output_dir={tmp_path / 'runs'}",
    ]
    warm_args = [*common, "train.steps=0", "sft.steps=4", "run.name=warm", "eval.every=2",
                 "eval.size=4", f"model.path={tmp_path / 'tiny'}"]  # fmt: skip
    out = run_cli("run", QUICKSTART, *warm_args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    warm = tmp_path / "runs" / "warm"
    lines = [json.loads(x) for x in (warm / "sft_metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 4
    # eval.every during the warm-up: at its step 2; its end is RL's step 0
    assert ["eval/accuracy" in x for x in lines] == [False, True, False, False]
    assert "eval (warm-up step 2/4): accuracy" in out.stdout
    assert "eval (RL step 0): accuracy" in out.stdout
    step0 = warm / "checkpoints" / "step-0"
    assert (step0 / "model.safetensors").is_file() and "step-0" in out.stdout
    again = run_cli("run", QUICKSTART, *warm_args, "resume=auto", cwd=tmp_path)
    assert again.returncode == 0 and "sft 1/4" not in again.stdout  # nothing left to do
    # the last words point at what the warm-up wrote, and the command they give starts RL
    said = out.stdout.strip().splitlines()[-1]
    assert said.startswith(
        f"cgrpo: warm-up done; its loss per step in {warm / 'sft_metrics.jsonl'}"
    )
    suggested = said.split(f"cgrpo run {QUICKSTART} ")[1].split()
    assert f"model.path={step0}" in suggested and "run.name=warm-rl" in suggested
    rl = run_cli("run", QUICKSTART, *suggested, "train.steps=1", "algorithm.prompts_per_step=2",
                 "algorithm.micro_batch_size=16", cwd=tmp_path)  # fmt: skip
    assert rl.returncode == 0, rl.stderr[-3000:]
    assert (tmp_path / "runs" / "warm-rl" / "checkpoints" / "step-1").is_dir()
    nothing = run_cli("check", QUICKSTART, "train.steps=0", "sft.steps=0")
    assert nothing.returncode == 2 and "nothing to do" in nothing.stderr

    # cgrpo eval on the warm run (its newest checkpoint): files and numbers agree
    out_dir = tmp_path / "ev"
    ev = run_cli("eval", QUICKSTART, *common, "eval.size=8", "--model", str(warm), "--k", "3",
                 "--limit", "5",
                 "--out", str(out_dir), cwd=tmp_path)  # fmt: skip
    assert ev.returncode == 0, ev.stderr[-3000:]
    report = json.loads((out_dir / "eval.json").read_text())
    assert report["model"] == str(step0) and report["problems"] == 5
    assert report["sampling"]["k"] == 3 and report["held_out_of_training_data"]
    generations = [json.loads(x) for x in (out_dir / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == 5 * (1 + 3)
    greedy = [g for g in generations if g["mode"] == "greedy"]
    assert report["metrics"]["eval/accuracy"] == sum(g["correct"] for g in greedy) / 5
    assert "| eval | 5 |" in (out_dir / "eval.md").read_text() and "pass@k" in ev.stdout
    assert report["metrics"]["eval/pass@3"] >= report["metrics"]["eval/avg@3"]


@pytest.mark.parametrize("wrong", ["perturbed_answer", "own_sample"])
def test_cgrpo_sft_with_refinement_examples_from_another_source(tmp_path, wrong):
    """cgrpo sft: the warm-up alone (train.steps=0), plain examples from data.task and
    refinement examples from sft.refinement_task whose wrong previous answer is a perturbed
    final answer, or the warm-up model's own wrong sample."""
    out = run_cli(
        "sft", QUICKSTART, "run.console=plain", "sft.steps=4", "sft.refinement_share=0.5",
        "sft.refinement_task={name: arithmetic, options: {size: 30, digits: 2, seed: 9}}",
        f"sft.wrong_answer={wrong}", f"model.path={tmp_path / 'tiny'}",
        f"run.output_dir={tmp_path / 'runs'}", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / "quickstart"
    lines = [json.loads(x) for x in (run / "sft_metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 4
    assert any("sft/own_wrong_share" in x for x in lines) == (wrong == "own_sample")
    assert (run / "checkpoints" / "step-0" / "model.safetensors").is_file()
    assert not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text()
    refused = run_cli(
        "check", QUICKSTART, "sft.refinement_share=0", "sft.wrong_answer=perturbed_answer"
    )
    assert refused.returncode == 2 and "sft.wrong_answer" in refused.stderr


def test_packed_micro_batches_train_and_log_token_utilization(tmp_path):
    """``algorithm.micro_batch_tokens`` through the real CLI (the quickstart with packed
    micro-batches in place of micro_batch_size): every update processes real tokens only,
    and the hf sampler reports its own utilisation."""
    recipe = tmp_path / "packed.yaml"
    text = (REPO / "recipes" / "quickstart-cpu.yaml").read_text()
    recipe.write_text(text.replace("micro_batch_size: 32", "micro_batch_tokens: 512"))
    short = [s for s in SHORT if "micro_batch_size" not in s]
    out = run_cli(
        "run",
        str(recipe),
        *short,
        f"model.path={tmp_path / 'tiny'}",
        f"run.output_dir={tmp_path / 'runs'}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    run = tmp_path / "runs" / "quickstart"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["update/token_utilization"] for m in lines] == [1.0, 1.0, 1.0]
    assert all(0 < m["policy/token_utilization"] <= 1 for m in lines)
    assert all(math.isfinite(m["loss/total"]) for m in lines)
