"""Mixed precision: float32 master weights with bf16 autocast compute, on CPU (autocast to
bf16 runs on CPU, so this is the same scheme as on GPU; tests/gpu repeats it on CUDA)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from cgrpo.algo.loss import LossConfig
from cgrpo.algo.mixing import TrainRow, collate
from cgrpo.config.schema import OptimConfig
from cgrpo.model.logprobs import forward_response
from cgrpo.model.precision import FULL, Precision, frozen_copy
from cgrpo.train.update import UpdateSettings, make_optimizer, update_policy

BF16 = Precision(torch.bfloat16, "cpu")


def make_rows(tok, model, precision):
    """Two groups of four: initial rows with their sampler log-probs, one refinement each."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(8):
        prompt = tok.encode(f"What is {i} + {i + 1}?")
        response = torch.randint(3, len(tok), (12,), generator=g).tolist()
        rows.append(TrainRow(i // 4, prompt, response, None, i % 4 == 3, 0.0, (-0.5, 0.5)[i % 2]))
    with torch.no_grad(), precision.autocast():
        lp, _ = forward_response(model, collate(rows, tok.pad_token_id), 1.0)
    for i, row in enumerate(rows):
        row.old_logprobs = None if row.is_refinement else lp[i, : len(row.response_ids)].tolist()
    return rows


def one_update(
    model_dir, tok, precision, optimizer="adamw", lr=1e-6, load_dtype=torch.float32, device="cpu"
):
    """(model, optimizer, parameter deltas, metrics) after one update on fixed rows."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=load_dtype).to(device)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    if optimizer == "adamw":
        opt, sched = make_optimizer(model, OptimConfig(lr=lr), total_updates=10)
    else:  # SGD: the weight change is proportional to the gradient itself
        opt, sched = torch.optim.SGD(model.parameters(), lr=lr), None
    loss = LossConfig(aggregation="token_sum", normalizer=16.0, entropy_coef=0.001)
    settings = UpdateSettings(1, 4, 1.0, loss, grad_clip=1.0, precision=precision)
    rows = make_rows(tok, model, precision)
    metrics = update_policy(model, opt, sched, rows, settings, tok.pad_token_id)
    deltas = {n: (p.detach() - before[n]).float().cpu() for n, p in model.named_parameters()}
    return model, opt, deltas, metrics


def relative_difference(a, b):
    """||a - b|| / ||a|| over all parameters."""
    num = sum(float(((a[n] - b[n]) ** 2).sum()) for n in a) ** 0.5
    den = sum(float((a[n] ** 2).sum()) for n in a) ** 0.5
    return num / den


def changed_fraction(deltas):
    return sum(int((d != 0).sum()) for d in deltas.values()) / sum(
        d.numel() for d in deltas.values()
    )


def test_bf16_compute_at_lr_1e6_moves_every_weight(tiny_model_dir, tiny):
    _, tok = tiny
    model, opt, deltas, _ = one_update(tiny_model_dir, tok, BF16)
    assert changed_fraction(deltas) >= 0.99
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights
    for state in opt.state.values():
        assert state["exp_avg"].dtype == torch.float32
        assert state["exp_avg_sq"].dtype == torch.float32


def test_bf16_weights_without_masters_round_the_update_away(tiny_model_dir, tiny):
    """The failure the master weights exist for, measured so the check above can fail:
    AdamW applied to bf16 weights at lr 1e-6 leaves almost every weight unchanged."""
    _, tok = tiny
    _, _, deltas, _ = one_update(tiny_model_dir, tok, FULL, load_dtype=torch.bfloat16)
    assert changed_fraction(deltas) < 0.1


def test_bf16_update_tracks_float32(tiny_model_dir, tiny):
    """Same batch, same start: the bf16-compute update is the float32 one within 2%.

    SGD, not AdamW: AdamW's first step is lr * sign(gradient) per weight, so a near-zero
    gradient whose sign differs by rounding flips a whole lr-sized step; that measures the
    sign of noise, not the precision of the update."""
    _, tok = tiny
    _, _, d32, m32 = one_update(tiny_model_dir, tok, FULL, optimizer="sgd", lr=1e-3)
    _, _, d16, m16 = one_update(tiny_model_dir, tok, BF16, optimizer="sgd", lr=1e-3)
    assert relative_difference(d32, d16) < 2e-2
    assert m16["loss/total"] == pytest.approx(m32["loss/total"], rel=1e-2)
    assert m16["update/grad_norm"] == pytest.approx(m32["update/grad_norm"], rel=2e-2)


def test_autocast_policy(tiny):
    model, _ = tiny
    x = torch.randn(2, 4)
    w = torch.randn(3, 4)
    with FULL.autocast():
        assert torch.nn.functional.linear(x, w).dtype == torch.float32
    with BF16.autocast():
        assert torch.nn.functional.linear(x, w).dtype == torch.bfloat16
    ref = frozen_copy(model, BF16)
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in ref.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the original is intact
    assert not ref.training
    assert Precision.from_recipe("bfloat16", "cpu") == BF16


@pytest.mark.parametrize("aggregation", ["token_sum", "token_mean", "seq_mean_token_mean"])
def test_token_capped_micro_batches_give_the_same_update(tiny_model_dir, tiny, aggregation):
    """Cutting a mini-batch by padded tokens instead of by count changes only how much is
    computed at once, not the gradient (SGD, float32)."""
    _, tok = tiny
    results = []
    for micro, cap in ((8, None), (3, None), (8, 40)):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        rows = make_rows(tok, model, FULL)
        rows[0].response_ids = rows[0].response_ids[:3]  # ragged lengths
        rows[0].old_logprobs = rows[0].old_logprobs[:3]
        loss = LossConfig(aggregation=aggregation, normalizer=16.0, entropy_coef=0.01)
        settings = UpdateSettings(1, micro, 1.0, loss, 1.0, max_tokens_per_micro_batch=cap)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        update_policy(model, opt, None, rows, settings, tok.pad_token_id)
        results.append({n: p.detach().clone() for n, p in model.named_parameters()})
    for other in results[1:]:
        for name, value in results[0].items():
            assert torch.allclose(value, other[name], atol=1e-6), name


def test_gradient_checkpointing_gives_the_same_update(tiny_model_dir, tiny):
    """model.gradient_checkpointing recomputes the decoder layers in backward; with the
    chunked output layer on top, the update is unchanged (SGD, float32)."""
    _, tok = tiny
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        if checkpointing:
            model.gradient_checkpointing_enable()
        rows = make_rows(tok, model, FULL)
        loss = LossConfig(aggregation="token_sum", normalizer=16.0, entropy_coef=0.01)
        settings = UpdateSettings(1, 4, 1.0, loss, 1.0)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        update_policy(model, opt, None, rows, settings, tok.pad_token_id)
        results.append({n: p.detach().clone() for n, p in model.named_parameters()})
    moved = 0
    for name, value in results[0].items():
        assert torch.allclose(value, results[1][name], atol=1e-6), name
        moved += 1
    assert moved > 0


def test_sampler_mismatch_is_measured_when_the_longest_rows_are_refinements(tiny_model_dir, tiny):
    """Micro-batches are packed longest first; a first micro-batch of refinement rows only
    must not cost the step its sampler/trainer mismatch metric."""
    _, tok = tiny
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    rows = make_rows(tok, model, FULL)
    for row in rows:
        if row.is_refinement:
            row.response_ids = row.response_ids * 3  # the longest rows: packed first
    loss = LossConfig(aggregation="token_sum", normalizer=16.0, entropy_coef=0.0)
    settings = UpdateSettings(1, 2, 1.0, loss, 1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    metrics = update_policy(model, opt, None, rows, settings, tok.pad_token_id)
    assert metrics["sampler/logprob_diff_max"] < 1e-5
