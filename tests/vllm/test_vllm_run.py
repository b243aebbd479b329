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


def test_cgrpo_eval_with_the_vllm_backend_matches_hf_greedy(tmp_path):
    """``cgrpo eval --backend vllm`` on a warmed-up tiny model scores the same greedy
    accuracy as the hf backend, benchmark by benchmark (the same prompts, verifiers and
    metrics code; only the sampler differs)."""
    fixtures = REPO / "tests" / "fixtures" / "benchmarks"
    warm = run_cli(
        "run", str(REPO / "recipes" / "quickstart-cpu.yaml"), "sft.steps=60", "train.steps=0",
        "run.console=plain", f"model.path={tmp_path / 'tiny'}",
        f"run.output_dir={tmp_path / 'runs'}", cwd=tmp_path,
    )  # fmt: skip
    assert warm.returncode == 0, warm.stderr[-3000:]
    run = tmp_path / "runs" / "quickstart"
    benchmarks = f"arithmetic-test,math-500={fixtures / 'math-500'}"
    reports = {}
    for backend in ("hf", "vllm"):
        extra = ["policy.options.kv_cache_memory_bytes=134217728"] if backend == "vllm" else []
        out = run_cli("eval", str(run), *extra, "--benchmarks", benchmarks, "--backend", backend,
                      "--limit", "40", "--out", str(tmp_path / backend), cwd=tmp_path)  # fmt: skip
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        reports[backend] = json.loads((tmp_path / backend / "eval.json").read_text())
    assert reports["vllm"]["policy_backend"] == "vllm"
    for name in ("arithmetic-test", "math-500"):
        key = f"eval/{name}/accuracy"
        assert reports["vllm"]["metrics"][key] == reports["hf"]["metrics"][key], key
    # not a trivial match of zeros: the warm-up taught it some sums (0.2 here)
    assert reports["hf"]["metrics"]["eval/arithmetic-test/accuracy"] > 0.1
