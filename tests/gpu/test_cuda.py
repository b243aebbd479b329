"""The CUDA / bfloat16 path of the hf backend. Skipped without CUDA (CI has no GPU); run
``python -m pytest -q tests/gpu`` on a GPU machine. The same code is exercised on CPU in
float32 (and a bf16 CPU smoke test below) by the rest of the suite."""

import json

import pytest
import torch

from tests.helpers import REPO, run_cli

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _short(tmp_path, *extra):
    return [
        "run",
        str(REPO / "recipes" / "quickstart-cpu.yaml"),
        "sft.steps=20",
        "train.steps=3",
        "data.task.options.size=40",
        "algorithm.prompts_per_step=4",
        "algorithm.micro_batch_size=16",
        "run.console=plain",
        f"model.path={tmp_path / 'tiny'}",
        f"run.output_dir={tmp_path / 'runs'}",
        *extra,
    ]


def _metrics(tmp_path, name="quickstart"):
    text = (tmp_path / "runs" / name / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.slow
def test_bfloat16_on_cpu_trains_and_logs_the_sampler_mismatch(tmp_path):
    out = run_cli(*_short(tmp_path, "model.dtype=bfloat16", "model.device=cpu"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for m in _metrics(tmp_path):
        assert m["sampler/logprob_diff_max"] < 0.2  # bf16 rounding, not a sync problem
        assert abs(m["ratio/mean"] - 1.0) < 0.05


@needs_cuda
@pytest.mark.gpu
def test_cuda_bf16_quickstart_runs(tmp_path):
    out = run_cli(*_short(tmp_path, "model.dtype=bfloat16", "model.device=cuda"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "model on cuda" in out.stdout
    assert [m["step"] for m in _metrics(tmp_path)] == [1, 2, 3]


@needs_cuda
@pytest.mark.gpu
def test_cuda_sampler_logprobs_match_the_trainer(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cgrpo.builtins.policies.hf import HFPolicy
    from cgrpo.interfaces import BuildContext
    from cgrpo.train.logprobs import forward_response
    from cgrpo.train.mixing import TrainRow, collate
    from cgrpo.types import SamplingParams

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for dtype, tol in ((torch.float32, 1e-3), (torch.bfloat16, 0.2)):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype).cuda()
        backend = HFPolicy(HFPolicy.Options(), BuildContext(model=model, tokenizer=tok))
        prompts = [tok.encode("What is 1 + 2?"), tok.encode("Hi")]
        out = backend.generate(prompts, SamplingParams(n=4, max_new_tokens=12))
        rows = [
            TrainRow(0, prompts[i], c.token_ids, c.logprobs, False, 0.0)
            for i, g in enumerate(out)
            for c in g
        ]
        batch = collate(rows, tok.pad_token_id)
        with torch.no_grad():
            lp, _ = forward_response(model, batch, 1.0)
        diff = ((lp.cpu() - batch.old_logprobs).abs() * batch.response_mask).max().item()
        assert diff < tol, (dtype, diff)
