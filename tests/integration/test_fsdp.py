"""``distributed.strategy: fsdp`` (FSDP2) on CPU with real gloo processes.

- 2 sharded processes give the 1-process update (float32, every aggregation, 1e-5), also
  when the ranks hold different numbers of micro-batches (the padding path), and with
  packed micro-batches (``micro_batch_tokens``) against the padded 1-process update;
- the full weights handed to a vLLM engine come one FSDP unit at a time and equal the
  model's state dict;
- ``torchrun --nproc_per_node 2 ... distributed.strategy=fsdp`` creates the tiny model on
  rank 0 alone and trains like 1 process, with a KL reference; killed (SIGKILL) inside
  the warm-up (sharded warm-up checkpoints) and then mid-step, and resumed each time, it
  ends bitwise equal to the uninterrupted run; its sharded checkpoints export to plain
  transformers weights.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from tests.helpers import REPO
from tests.integration.test_distributed import free_port, rows_for_test

pytestmark = pytest.mark.slow


def _init(rank, world, port):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )


def _sharded_update(rank, model_dir, rows, aggregation, out_path, port, split, packed):
    """One update of a 2-process sharded model; rank 0 saves the full weights."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoModelForCausalLM

    from cgrpo.algo.loss import LossConfig
    from cgrpo.model.attention import use_cgrpo_sdpa
    from cgrpo.model.sharding import shard_model
    from cgrpo.train.update import UpdateSettings, update_policy

    _init(rank, 2, port)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    use_cgrpo_sdpa(model)  # as model loading does
    model = shard_model(model, torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)  # the change is the gradient itself
    loss = LossConfig(aggregation=aggregation, normalizer=16.0, entropy_coef=0.01)
    settings = UpdateSettings(
        updates_per_step=1, micro_batch_size=2, temperature=1.0, loss=loss, grad_clip=1.0,
        micro_batch_tokens=40 if packed else None,
    )  # fmt: skip
    mine = [r for r in rows if split(r.group) == rank]
    metrics = update_policy(model, opt, None, mine, settings, pad_id=0)
    full = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if rank == 0:
        torch.save({"state": full, "metrics": metrics}, out_path)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _single_update(model_dir, rows, aggregation):
    from transformers import AutoModelForCausalLM

    from cgrpo.algo.loss import LossConfig
    from cgrpo.train.update import UpdateSettings, update_policy

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    loss = LossConfig(aggregation=aggregation, normalizer=16.0, entropy_coef=0.01)
    settings = UpdateSettings(
        updates_per_step=1, micro_batch_size=2, temperature=1.0, loss=loss, grad_clip=1.0
    )
    metrics = update_policy(model, opt, None, rows, settings, pad_id=0)
    return model.state_dict(), metrics


def _even(group):
    return group % 2


def _uneven(group):  # rank 0: 3 groups (3 micro-batches), rank 1: 1 group (1 micro-batch)
    return int(group == 3)


@pytest.mark.parametrize(
    ("aggregation", "split", "packed"),
    [
        ("token_sum", _even, False),
        ("token_mean", _even, False),
        ("seq_mean_token_mean", _even, False),
        ("token_mean", _uneven, False),
        ("seq_mean_token_mean", _uneven, True),
    ],
)
def test_two_sharded_processes_give_the_single_process_update(
    tiny_model_dir, tiny, tmp_path, aggregation, split, packed
):
    _, tok = tiny
    rows = rows_for_test(tok)
    one_state, one_metrics = _single_update(tiny_model_dir, rows, aggregation)
    mp.spawn(
        _sharded_update,
        args=(tiny_model_dir, rows, aggregation, tmp_path / "two.pt", free_port(), split, packed),
        nprocs=2,
        join=True,
    )
    two = torch.load(tmp_path / "two.pt")
    assert two["metrics"]["update/grad_norm"] == pytest.approx(
        one_metrics["update/grad_norm"], rel=1e-5
    )
    assert two["metrics"]["update/grad_norm"] > 0
    for name, tensor in one_state.items():
        assert torch.allclose(tensor, two["state"][name], atol=1e-5), name


def _full_weights_worker(rank, model_dir, out_path, port):
    from transformers import AutoModelForCausalLM

    from cgrpo.model.sharding import full_weights, gathered, shard_model, units

    _init(rank, 2, port)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    shard_model(model, torch.bfloat16)
    layers = units(model)[:-1]
    seen, most_gathered = {}, 0
    for name, tensor in full_weights(model):
        seen[name] = tensor.float().clone()
        gathered_now = sum(not hasattr(layer.mlp.up_proj.weight, "full_tensor") for layer in layers)
        most_gathered = max(most_gathered, gathered_now)
    with gathered(model):  # generate without collectives: only rank 0 calls it, twice
        if rank == 0:
            ids = torch.tensor([[5, 6, 7]])
            for _ in range(2):
                model.generate(ids, max_new_tokens=3, do_sample=False, synced_gpus=False)
    torch.distributed.barrier()
    if rank == 0:
        torch.save({"expected": expected, "seen": seen, "most": most_gathered}, out_path)
    torch.distributed.destroy_process_group()


def test_full_weights_come_one_unit_at_a_time(tiny_model_dir, tmp_path):
    mp.spawn(
        _full_weights_worker,
        args=(tiny_model_dir, tmp_path / "w.pt", free_port()),
        nprocs=2,
        join=True,
    )
    out = torch.load(tmp_path / "w.pt")
    assert out["seen"].keys() == out["expected"].keys()
    for name, tensor in out["expected"].items():  # gathered in bf16
        assert torch.allclose(out["seen"][name], tensor, atol=1e-2, rtol=1e-2), name
    assert out["most"] == 1  # never more than one decoder layer gathered at once


def _torchrun(args, cwd, env=None):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
        "cgrpo",
        *args,
    ]
    full_env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600)


def assert_close_after_adam(a, b):
    assert a.keys() == b.keys()
    apart = sum(int(((a[k] - b[k]).abs() > 1e-6).sum()) for k in a)
    assert apart <= 50
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 2e-4


def _metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_torchrun_fsdp_trains_like_one_process_and_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    from cgrpo.cli.main import main

    tiny = tmp_path / "tiny"

    def args(name, *extra):
        return [
            "run",
            str(REPO / "recipes" / "quickstart-cpu.yaml"),
            "sft.steps=10",
            "train.steps=3",
            "train.save_every=1",
            "data.task.options.size=40",
            "algorithm.prompts_per_step=4",
            "algorithm.micro_batch_size=4",
            "algorithm.loss.kl_coef=0.05",
            "run.reproducible_sampling=true",
            "run.console=plain",
            f"model.path={tiny}",
            f"run.output_dir={tmp_path}",
            f"run.name={name}",
            *extra,
        ]

    # a fresh start: rank 0 creates the tiny model while rank 1 waits for it (both ranks
    # creating it, one reading what the other was still writing, failed 3 starts in 12)
    sharded = _torchrun([*args("two"), "distributed.strategy=fsdp"], tmp_path)
    assert sharded.returncode == 0, sharded.stdout + sharded.stderr
    assert "2 processes" in sharded.stdout
    assert (sharded.stdout + sharded.stderr).count("creating a tiny random one there") == 1
    assert main(args("one")) == 0  # 1 process, ddp, on the same tiny model
    for a, b in zip(_metrics(tmp_path / "one"), _metrics(tmp_path / "two"), strict=True):
        assert a["reward/initial_mean"] == b["reward/initial_mean"]  # the same samples
        assert a["loss/total"] == pytest.approx(b["loss/total"], abs=1e-5)
        # (the loss holds the KL term exactly; kl/mean is averaged per rank, so only close)
        assert b["kl/mean"] == pytest.approx(a["kl/mean"], rel=0.1)
    final = tmp_path / "two" / "checkpoints" / "step-3"
    assert (final / "dcp").is_dir() and (final / "model.safetensors").is_file()
    assert not (tmp_path / "two" / "checkpoints" / "step-2" / "model.safetensors").exists()
    w1 = load_file(tmp_path / "one" / "checkpoints" / "step-3" / "model.safetensors")
    w2 = load_file(final / "model.safetensors")
    assert w1.keys() == w2.keys()
    # AdamW turns float noise on near-zero gradients into steps of either sign (measured:
    # 4 of 345,216 weights apart, by at most 2.6e-5 = 1/80 of one step at lr 2e-3); the
    # gradients themselves agree to 1e-5 (the SGD test above)
    assert_close_after_adam(w1, w2)

    # SIGKILL both ranks at warm-up step 6 of 10: the warm-up goes on from its sharded
    # step-4 checkpoint (sft.save_every under fsdp); then in the middle of RL step 3, and
    # the run goes on from step 2's shards
    kill = [*args("kill"), "distributed.strategy=fsdp", "sft.save_every=4"]
    crashed = _torchrun(kill, tmp_path, env={"CGRPO_CRASH_AT": "sft:6"})
    assert crashed.returncode != 0
    warm = tmp_path / "kill" / "checkpoints" / "sft"
    assert sorted(p.name for p in warm.iterdir()) == ["step-4"]
    assert (warm / "step-4" / "dcp").is_dir()
    crashed = _torchrun([*kill, "resume=auto"], tmp_path, env={"CGRPO_CRASH_AT": "step:3"})
    assert crashed.returncode != 0
    assert "the warm-up goes on after its step 4" in crashed.stdout
    assert [m["step"] for m in _metrics(tmp_path / "kill")] == [1, 2]
    sft_lines = (tmp_path / "kill" / "sft_metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in sft_lines] == list(range(1, 11))
    resumed = _torchrun([*kill, "resume=auto"], tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming from" in resumed.stdout and "step-2" in resumed.stdout
    w3 = load_file(tmp_path / "kill" / "checkpoints" / "step-3" / "model.safetensors")
    assert all(torch.equal(w2[k], w3[k]) for k in w2)  # bitwise
    ref, res = _metrics(tmp_path / "two"), _metrics(tmp_path / "kill")
    assert [m["step"] for m in res] == [1, 2, 3]
    assert ref[-1]["loss/total"] == res[-1]["loss/total"]

    # a sharded-only checkpoint exports to plain transformers weights
    out = tmp_path / "export"
    assert main(["export", str(tmp_path / "two" / "checkpoints" / "step-2"), "--out", str(out),
                 "--dtype", "float32"]) == 0  # fmt: skip
    from transformers import AutoModelForCausalLM

    exported = load_file(out / "model.safetensors")
    one_step2 = load_file(tmp_path / "one" / "checkpoints" / "step-2" / "model.safetensors")
    assert_close_after_adam(exported, one_step2)  # step 2 of the sharded run, not step 3
    from cgrpo.model.shards import load_full_weights

    again = AutoModelForCausalLM.from_pretrained(final)
    load_full_weights(final, again)  # step 3's shards == step 3's safetensors
    for name, tensor in again.state_dict().items():
        assert torch.equal(tensor, w2.get(name, tensor)), name


def test_fsdp_with_lora_is_a_recipe_error(tmp_path):
    from cgrpo.cli.main import main

    code = main(
        [
            "check",
            str(REPO / "recipes" / "quickstart-cpu.yaml"),
            "distributed.strategy=fsdp",
            "model.lora={r: 4}",
        ]
    )
    assert code == 2
