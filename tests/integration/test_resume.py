"""Crash safety and exact resume through the real CLI.

Runs are killed with a real SIGKILL at an exact point (``CGRPO_CRASH_AT``: mid-step or
mid-checkpoint-write) or stopped with SIGTERM, resumed with ``resume=auto``, and must end
with bitwise the same weights as an uninterrupted run with the same seed (CPU, 1 thread).
"""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import REPO, fake_distribution, run_cli

pytestmark = pytest.mark.slow
QUICKSTART = str(REPO / "recipes" / "quickstart-cpu.yaml")
STEPS = 6


def args(root, name, *extra):
    return [
        "run",
        QUICKSTART,
        "sft.steps=10",
        f"train.steps={STEPS}",
        "data.task.options.size=60",
        "algorithm.prompts_per_step=4",
        "algorithm.micro_batch_size=16",
        "run.console=plain",
        f"model.path={root / 'tiny'}",
        f"run.output_dir={root / 'runs'}",
        f"run.name={name}",
        *extra,
    ]


def weights(root, name, step=STEPS):
    return load_file(root / "runs" / name / "checkpoints" / f"step-{step}" / "model.safetensors")


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def metric_lines(root, name):
    text = (root / "runs" / name / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    out = run_cli(*args(root, "ref", "train.save_every=1"), cwd=root)
    assert out.returncode == 0, out.stderr
    return root


def test_sigkill_mid_step_then_resume_is_bitwise_identical(reference):
    root = reference
    crashed = run_cli(
        *args(root, "kill-step", "train.save_every=1"), cwd=root, env={"CGRPO_CRASH_AT": "step:4"}
    )
    assert crashed.returncode == -signal.SIGKILL
    assert [m["step"] for m in metric_lines(root, "kill-step")] == [1, 2, 3]
    resumed = run_cli(*args(root, "kill-step", "train.save_every=1", "resume=auto"), cwd=root)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout and "step-3" in resumed.stdout
    assert same_weights(weights(root, "ref"), weights(root, "kill-step"))
    ref, res = metric_lines(root, "ref"), metric_lines(root, "kill-step")
    assert [m["step"] for m in res] == list(range(1, STEPS + 1))  # no step twice, none lost
    for a, b in zip(ref, res, strict=True):
        assert a["reward/initial_mean"] == b["reward/initial_mean"]
        assert a["loss/total"] == b["loss/total"]


def test_kl_reference_survives_resume(reference):
    """With kl_coef > 0 the reference is the policy after the warm-up, saved in the run
    directory; a resumed run measures KL against it, not against the checkpoint's weights
    (as it did before the reference was saved)."""
    root = reference
    kl = ("train.save_every=1", "algorithm.loss.kl_coef=0.05")
    assert run_cli(*args(root, "kl-ref", *kl), cwd=root).returncode == 0
    crashed = run_cli(*args(root, "kl-kill", *kl), cwd=root, env={"CGRPO_CRASH_AT": "step:4"})
    assert crashed.returncode == -signal.SIGKILL
    assert (root / "runs" / "kl-kill" / "reference" / "model.safetensors").is_file()
    resumed = run_cli(*args(root, "kl-kill", *kl, "resume=auto"), cwd=root)
    assert resumed.returncode == 0, resumed.stderr
    assert same_weights(weights(root, "kl-ref"), weights(root, "kl-kill"))
    ref, res = metric_lines(root, "kl-ref"), metric_lines(root, "kl-kill")
    assert [m["kl/mean"] for m in ref] == [m["kl/mean"] for m in res]
    assert ref[-1]["kl/mean"] > 0


def test_sigkill_while_writing_a_checkpoint_leaves_no_fake_checkpoint(reference):
    root = reference
    crashed = run_cli(
        *args(root, "kill-ckpt", "train.save_every=1"),
        cwd=root,
        env={"CGRPO_CRASH_AT": "checkpoint:3"},
    )
    assert crashed.returncode == -signal.SIGKILL
    ckpts = root / "runs" / "kill-ckpt" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if not p.name.startswith(".")) == [
        "step-1",
        "step-2",
    ]
    assert list(ckpts.glob(".tmp-step-3-*"))  # the half-written one, never renamed
    resumed = run_cli(*args(root, "kill-ckpt", "train.save_every=1", "resume=auto"), cwd=root)
    assert resumed.returncode == 0, resumed.stderr
    assert "step-2" in resumed.stdout
    assert not list(ckpts.glob(".tmp-step-*"))
    assert same_weights(weights(root, "ref"), weights(root, "kill-ckpt"))


def test_fsdp_killed_while_writing_shards_resumes_bitwise(reference):
    """The sharded checkpoint (one process under distributed.strategy=fsdp: a process
    group of one, DCP shards): a kill while it is written leaves no fake checkpoint, and
    the resumed run ends bitwise equal to an uninterrupted fsdp run."""
    root = reference
    fsdp = ("train.save_every=1", "distributed.strategy=fsdp")
    assert run_cli(*args(root, "fsdp-ref", *fsdp), cwd=root).returncode == 0
    crashed = run_cli(
        *args(root, "fsdp-kill", *fsdp), cwd=root, env={"CGRPO_CRASH_AT": "checkpoint:3"}
    )
    assert crashed.returncode == -signal.SIGKILL
    ckpts = root / "runs" / "fsdp-kill" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if not p.name.startswith(".")) == [
        "step-1",
        "step-2",
    ]
    assert (ckpts / "step-2" / "dcp").is_dir()
    assert not (ckpts / "step-2" / "model.safetensors").exists()  # only the last has it
    resumed = run_cli(*args(root, "fsdp-kill", *fsdp, "resume=auto"), cwd=root)
    assert resumed.returncode == 0, resumed.stderr
    assert "step-2" in resumed.stdout
    assert not list(ckpts.glob(".tmp-step-*"))
    assert same_weights(weights(root, "fsdp-ref"), weights(root, "fsdp-kill"))
    # and one process under fsdp computes what one process under ddp does, to float
    # rounding: without sharding each distinct prompt runs once for its group's rows
    # (model/logprobs.py), under fsdp every row runs whole; the same sums, another order
    ddp, sharded = weights(root, "ref"), weights(root, "fsdp-ref")
    start = load_file(root / "tiny" / "model.safetensors")
    assert ddp.keys() == sharded.keys()
    gap = max((ddp[k] - sharded[k]).abs().max().item() for k in ddp)
    moved = max((ddp[k] - start[k]).abs().max().item() for k in ddp)
    assert gap < 0.01 * moved, f"fsdp and ddp differ by {gap}; training moved them {moved}"
    rewards = [
        [m["reward/initial_mean"] for m in metric_lines(root, run)] for run in ("ref", "fsdp-ref")
    ]
    assert rewards[0] == rewards[1]  # the same samples, step by step


def test_sigterm_saves_a_checkpoint_and_resume_finishes_identically(reference):
    root = reference
    cmd = [sys.executable, "-m", "cgrpo", *args(root, "term")]
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    metrics = root / "runs" / "term" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    status = json.loads((root / "runs" / "term" / "status.json").read_text())
    assert status["status"] == "interrupted"
    assert "resume=auto" in out
    saved = [p.name for p in (root / "runs" / "term" / "checkpoints").glob("step-*")]
    assert len(saved) == 1 and saved[0] != f"step-{STEPS}"
    resumed = run_cli(*args(root, "term", "resume=auto"), cwd=root)
    assert resumed.returncode == 0, resumed.stderr
    assert same_weights(weights(root, "ref"), weights(root, "term"))


def test_changed_recipe_on_resume_is_reported_and_can_be_accepted(reference):
    root = reference
    changed = run_cli(
        *args(root, "ref", "resume=auto", "optim.lr=0.0002", "train.steps=7"), cwd=root
    )
    assert changed.returncode == 2
    assert "optim.lr: 0.0001 -> 0.0002" in changed.stderr
    assert "train.steps: 6 -> 7" in changed.stderr
    assert "run.allow_recipe_change=true" in changed.stderr
    extended = run_cli(
        *args(root, "ref", "resume=auto", "train.steps=7", "run.allow_recipe_change=true"), cwd=root
    )
    assert extended.returncode == 0, extended.stderr
    assert [m["step"] for m in metric_lines(root, "ref")] == list(range(1, 8))


def test_existing_run_without_resume_is_refused(reference):
    out = run_cli(*args(reference, "ref"), cwd=reference)
    assert out.returncode == 2 and "resume=auto" in out.stderr


def test_resume_from_an_incomplete_path_is_a_recipe_error(reference, tmp_path):
    out = run_cli(*args(reference, "ref", f"resume={tmp_path}"), cwd=reference)
    assert out.returncode == 2 and "not a complete checkpoint" in out.stderr


NAN_PLUGIN = """
from cgrpo import hookimpl
from cgrpo.types import Verdict

class NaNVerifier:
    '''A broken verifier: every reward is NaN.'''
    def __init__(self, options, context):
        pass
    def verify(self, response, problem):
        return Verdict(float("nan"), False)

@hookimpl
def register_verifiers(register):
    register("nan", NaNVerifier)
"""


def test_non_finite_updates_are_skipped_then_stop_the_run(tmp_path):
    (tmp_path / "nan_plugin.py").write_text(NAN_PLUGIN)
    site = fake_distribution(tmp_path, "nan-plugin", {"nan": "nan_plugin"})
    out = run_cli(
        *args(tmp_path, "nan", "verifier=nan", "train.max_nonfinite_steps=2", "train.save_every=1"),
        cwd=tmp_path,
        paths=[site],
    )
    assert out.returncode == 1
    assert "2 steps in a row had non-finite loss or gradients" in out.stderr
    lines = metric_lines(tmp_path, "nan")
    assert [m["update/skipped_nonfinite"] for m in lines] == [1.0, 1.0]
    before = load_file(tmp_path / "runs" / "nan" / "checkpoints" / "step-1" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in before.values())


def test_sigkill_inside_the_warm_up_then_resume_ends_identically(tmp_path):
    """A run killed inside the SFT warm-up (two sources, no checkpoint yet) restarts the
    seeded warm-up on resume=auto and ends with bitwise the same weights; with
    sft.save_every it goes on from the warm-up's newest checkpoint to the same weights.
    sft_metrics.jsonl holds each warm-up step once."""

    def sft_args(name, *extra):
        return ["sft", QUICKSTART, "sft.steps=8", "sft.refinement_share=0.5",
                "sft.refinement_task={name: arithmetic, options: {size: 30, digits: 2, seed: 9}}",
                "run.console=plain", f"model.path={tmp_path / 'tiny'}",
                f"run.output_dir={tmp_path / 'runs'}", f"run.name={name}", *extra]  # fmt: skip

    assert run_cli(*sft_args("ref"), cwd=tmp_path).returncode == 0
    crashed = run_cli(*sft_args("kill"), cwd=tmp_path, env={"CGRPO_CRASH_AT": "sft:5"})
    assert crashed.returncode == -signal.SIGKILL
    resumed = run_cli(*sft_args("kill", "resume=auto"), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert same_weights(weights(tmp_path, "ref", 0), weights(tmp_path, "kill", 0))
    lines = (tmp_path / "runs" / "kill" / "sft_metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, 9))

    # with sft.save_every=3 the warm-up goes on from its step-3 checkpoint instead
    saving = sft_args("saved", "sft.save_every=3")
    crashed = run_cli(*saving, cwd=tmp_path, env={"CGRPO_CRASH_AT": "sft:5"})
    assert crashed.returncode == -signal.SIGKILL
    warm = tmp_path / "runs" / "saved" / "checkpoints" / "sft"
    assert sorted(p.name for p in warm.iterdir()) == ["step-3"]
    resumed = run_cli(*saving, "resume=auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "the warm-up goes on after its step 3" in resumed.stdout + resumed.stderr
    assert same_weights(weights(tmp_path, "ref", 0), weights(tmp_path, "saved", 0))
    lines = (tmp_path / "runs" / "saved" / "sft_metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, 9))
    assert sorted(p.name for p in warm.iterdir()) == ["step-6"]  # the newest only
