"""Several processes on CPU with gloo: the update of 2 processes x B/2 sequences equals the
update of 1 process x B, and ``torchrun --nproc_per_node 2`` reproduces a 1-process run."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from tests.helpers import REPO

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rows_for_test(tok):
    """Eight fixed rows in 4 groups (2 per group): initial and refinement members with
    different lengths and advantages."""
    from cgrpo.algo.mixing import TrainRow

    rows = []
    for g in range(4):
        prompt = tok.encode(f"What is {g} + {g}?")
        initial = [*tok.encode(f"{g} + {g} = {2 * g + 1}.")[: 3 + g], tok.eos_token_id]
        refined = [*tok.encode(f"The answer is {2 * g}."), tok.eos_token_id]
        rows.append(TrainRow(g, prompt, initial, [-1.5] * len(initial), False, 0.0, -0.5))
        rows.append(TrainRow(g, prompt, refined, None, True, 1.0, 0.5 + 0.1 * g))
    return rows


def _update(model_dir, rows, aggregation, out_path, rank=0, world=1, port=0):
    from transformers import AutoModelForCausalLM

    from cgrpo.algo.loss import LossConfig
    from cgrpo.train.update import UpdateSettings, update_policy

    torch.set_num_threads(1)
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    # plain SGD: the weight change is the (clipped) gradient itself. Adam would turn float
    # noise on near-zero gradients into full-size steps of either sign.
    opt, sched = torch.optim.SGD(model.parameters(), lr=1.0), None
    loss = LossConfig(aggregation=aggregation, normalizer=16.0, entropy_coef=0.01)
    settings = UpdateSettings(
        updates_per_step=1, micro_batch_size=3, temperature=1.0, loss=loss, grad_clip=1.0
    )
    mine = [r for r in rows if r.group % world == rank]
    metrics = update_policy(model, opt, sched, mine, settings, pad_id=0)
    if rank == 0:
        torch.save({"state": model.state_dict(), "metrics": metrics}, out_path)
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _worker(rank, model_dir, rows, aggregation, out_path, port):
    _update(model_dir, rows, aggregation, out_path, rank=rank, world=2, port=port)


@pytest.mark.parametrize("aggregation", ["token_sum", "token_mean", "seq_mean_token_mean"])
def test_two_processes_give_the_single_process_update(tiny_model_dir, tiny, tmp_path, aggregation):
    _, tok = tiny
    rows = rows_for_test(tok)
    _update(tiny_model_dir, rows, aggregation, tmp_path / "one.pt")
    mp.spawn(
        _worker,
        args=(tiny_model_dir, rows, aggregation, tmp_path / "two.pt", free_port()),
        nprocs=2,
        join=True,
    )
    one = torch.load(tmp_path / "one.pt")
    two = torch.load(tmp_path / "two.pt")
    assert one["metrics"]["update/grad_norm"] == pytest.approx(
        two["metrics"]["update/grad_norm"], rel=1e-5
    )
    changed = 0
    for name, tensor in one["state"].items():
        assert torch.allclose(tensor, two["state"][name], atol=1e-6), name
        changed += 1
    assert changed > 0


def _cli(args, nproc, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "cgrpo", *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
            "-m",
            "cgrpo",
            *args,
        ]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_torchrun_two_processes_match_one_process(tmp_path):
    from safetensors.torch import load_file

    tiny = tmp_path / "tiny"

    def args(name):
        return [
            "run",
            str(REPO / "recipes" / "quickstart-cpu.yaml"),
            "sft.steps=10",
            "train.steps=3",
            "data.task.options.size=40",
            "algorithm.prompts_per_step=4",
            "algorithm.micro_batch_size=8",
            "run.reproducible_sampling=true",
            "run.console=plain",
            f"model.path={tiny}",
            f"run.output_dir={tmp_path}",
            f"run.name={name}",
        ]

    single = _cli(args("one"), 1, tmp_path)  # also creates the tiny model both runs use
    assert single.returncode == 0, single.stderr
    double = _cli(args("two"), 2, tmp_path)
    assert double.returncode == 0, double.stdout + double.stderr
    assert "2 processes" in double.stdout
    m1 = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in m2] == [1, 2, 3]  # rank 0 alone writes
    for a, b in zip(m1, m2, strict=True):  # the same samples, verdicts and critiques
        assert a["reward/initial_mean"] == b["reward/initial_mean"]
        assert a["refine/generated"] == b["refine/generated"]
        assert a["loss/total"] == pytest.approx(b["loss/total"], abs=1e-5)
    w1 = load_file(tmp_path / "one" / "checkpoints" / "step-3" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "checkpoints" / "step-3" / "model.safetensors")
    for name in w1:
        assert torch.allclose(w1[name], w2[name], atol=1e-5), name
