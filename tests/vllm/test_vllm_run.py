"""``cgrpo run`` with ``policy=vllm`` through the real CLI on the CPU engine."""

import json

from tests.helpers import REPO, run_cli


def test_quickstart_trains_with_vllm(tmp_path):
    common = [
        "sft.steps=20",
        "train.steps=3",
        "data.task.options.size=40",
        "algorithm.prompts_per_step=4",
        "algorithm.micro_batch_size=16",
        "run.console=plain",
        f"model.path={tmp_path / 'tiny'}",
        f"run.output_dir={tmp_path / 'runs'}",
    ]
    out = run_cli(
        "run",
        str(REPO / "recipes" / "quickstart-cpu.yaml"),
        *common,
        "policy=vllm",
        "policy.options.kv_cache_memory_bytes=134217728",
        "run.name=vllm",
        cwd=tmp_path,
        env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # the engine is shut down before torch.distributed is torn down: no traceback at exit
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    metrics = [
        json.loads(x)
        for x in (tmp_path / "runs" / "vllm" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        assert m["sampler/logprob_diff_max"] < 1e-2  # the engine samples the trained weights
        assert m["policy/sync_logprob_diff_max"] < 1e-2
        # every critiqued response was refined by the engine (none skipped on this budget)
        assert m["refine/generated"] == m.get("critique/requested", 0.0)
    assert sum(m["refine/generated"] for m in metrics) > 0  # the early policy fails: refines
    assert (tmp_path / "runs" / "vllm" / "checkpoints" / "step-3" / "model.safetensors").exists()
