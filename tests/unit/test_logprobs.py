"""Chunked log-probs and entropy equal the full (B, T, V) computation, gradients included."""

import pytest
import torch

from cgrpo.algo.mixing import TrainRow, collate
from cgrpo.model.logprobs import (
    chunked_token_stats,
    forward_response,
    full_logits_forward,
    split_head,
)


@pytest.fixture(scope="module")
def model_and_batch(tiny):
    model, tok = tiny
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(5):  # ragged prompts and responses, initial and refinement rows
        prompt = tok.encode(f"What is {i} + {3 * i}?" + " Think." * (i % 3))
        response = torch.randint(3, len(tok), (2 + 4 * i,), generator=g).tolist()
        rows.append(TrainRow(i // 2, prompt, response, None, i == 4, 0.0))
    return model, collate(rows, tok.pad_token_id)


def _run(fn, model, batch, temperature, entropy, **kw):
    """Values and parameter gradients of a loss that uses log-probs and entropy."""
    model.zero_grad(set_to_none=True)
    lp, ent = fn(model, batch, temperature, entropy, **kw)
    mask = batch.response_mask
    weights = torch.linspace(-1.0, 2.0, mask.numel()).view(mask.shape)
    loss = (lp * weights * mask).sum()
    if entropy == "loss":
        loss = loss - 0.3 * (ent * mask).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return lp.detach(), (None if ent is None else ent.detach()), grads


@pytest.mark.parametrize("chunk", [1, 7, 4096])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_equals_full_values_and_gradients(model_and_batch, chunk, temperature):
    model, batch = model_and_batch
    full = _run(full_logits_forward, model, batch, temperature, "loss")
    chunked = _run(forward_response, model, batch, temperature, "loss", chunk_tokens=chunk)
    mask = batch.response_mask.bool()
    assert (full[0] - chunked[0])[mask].abs().max() < 1e-5
    assert (full[1] - chunked[1])[mask].abs().max() < 1e-5
    assert chunked[0][~mask].abs().max() == 0  # padding is never projected
    assert full[2].keys() == chunked[2].keys() and len(full[2]) > 0
    for name, grad in full[2].items():
        scale = max(1.0, grad.abs().max().item())
        assert (grad - chunked[2][name]).abs().max() / scale < 1e-5, name


def test_entropy_only_where_used(model_and_batch):
    model, batch = model_and_batch
    lp, ent = forward_response(model, batch, 1.0, "none")
    assert ent is None and lp.requires_grad
    lp, ent = forward_response(model, batch, 1.0, "metric")
    assert not ent.requires_grad  # measured for the per-kind metrics, no graph kept
    ref_lp, ref_ent = full_logits_forward(model, batch, 1.0, "metric")
    mask = batch.response_mask.bool()
    assert (ent - ref_ent)[mask].abs().max() < 1e-5
    assert (lp - ref_lp)[mask].abs().max() < 1e-5
    _, ent = forward_response(model, batch, 1.0, "loss")
    assert ent.requires_grad


def test_uniform_logits_worked_example():
    """Zero weights give uniform logits over V=4: log-prob log(1/4) = -1.3863 and entropy
    log 4 = 1.3863 for every token, whatever the chunking."""
    head = torch.nn.Linear(3, 4, bias=False)
    torch.nn.init.zeros_(head.weight)
    hidden = torch.randn(5, 3)
    lp, ent = chunked_token_stats(hidden, torch.tensor([0, 1, 2, 3, 0]), head, 1.0, "metric", 2)
    assert torch.allclose(lp, torch.full((5,), -1.3862944))
    assert torch.allclose(ent, torch.full((5,), 1.3862944))


def test_backward_keeps_no_full_logits():
    """Under autograd each chunk is checkpointed: what the graph saves is the hidden states
    and the weight, never a (tokens x V) tensor."""
    n, h, v, chunk = 64, 8, 1000, 16
    head = torch.nn.Linear(h, v)
    hidden = torch.randn(n, h, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lp, ent = chunked_token_stats(hidden, torch.randint(0, v, (n,)), head, 1.0, "loss", chunk)
    assert max(saved) < chunk * v  # nothing as large as even one chunk's logits
    (lp.sum() + ent.sum()).backward()
    assert hidden.grad is not None and head.weight.grad is not None


def test_heads_that_are_not_a_plain_projection_use_the_full_path(tiny):
    model, _ = tiny
    assert split_head(model) is not None
    model.config.final_logit_softcapping = 30.0
    try:
        assert split_head(model) is None  # forward_response then uses the model's own logits
    finally:
        model.config.final_logit_softcapping = None


def test_chunked_backward_under_bf16_autocast_tracks_the_full_path(model_and_batch):
    """The hand-written backward runs its matmuls under the autocast forward saw: with bf16
    compute it agrees with autograd through the model's own logits to bf16 rounding."""
    from cgrpo.model.precision import Precision

    model, batch = model_and_batch
    with Precision(torch.bfloat16, "cpu").autocast():
        full = _run(full_logits_forward, model, batch, 0.7, "loss")
        chunked = _run(forward_response, model, batch, 0.7, "loss", chunk_tokens=5)
    mask = batch.response_mask.bool()
    assert (full[0] - chunked[0])[mask].abs().max() < 2e-2
    num = sum(float((full[2][n] - chunked[2][n]).norm() ** 2) for n in full[2]) ** 0.5
    den = sum(float(full[2][n].norm() ** 2) for n in full[2]) ** 0.5
    assert num / den < 2e-2


def test_recipe_default_chunk_is_the_library_default():
    from cgrpo.config.schema import AlgorithmConfig
    from cgrpo.model.logprobs import DEFAULT_CHUNK_TOKENS

    assert AlgorithmConfig().logprob_chunk_tokens == DEFAULT_CHUNK_TOKENS


def test_frozen_output_layer_gets_no_gradient_and_the_rest_is_unchanged():
    """With a frozen output layer (LoRA) backward computes no weight gradient for it, and
    the hidden states' gradient is the one autograd gives through full logits."""
    torch.manual_seed(0)
    n, h, v = 10, 6, 50
    head = torch.nn.Linear(h, v, bias=True).requires_grad_(False)
    hidden = torch.randn(n, h, requires_grad=True)
    targets = torch.randint(0, v, (n,))
    lp, ent = chunked_token_stats(hidden, targets, head, 0.7, "loss", 3)
    (lp.sum() - 0.3 * ent.sum()).backward()
    assert head.weight.grad is None and head.bias.grad is None
    ref_hidden = hidden.detach().clone().requires_grad_(True)
    logits = head(ref_hidden) / 0.7
    ref_lp = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    probs = torch.softmax(logits, -1)
    ref_ent = -(probs * torch.log_softmax(logits, -1)).sum(-1)
    (ref_lp.sum() - 0.3 * ref_ent.sum()).backward()
    assert torch.allclose(hidden.grad, ref_hidden.grad, atol=1e-5)


@pytest.fixture(scope="module")
def grouped_batch(tiny):
    """3 prompts of different lengths (left padding), 4 rows each with ragged responses,
    the last row of each group a refinement: what one step's update batch looks like."""
    _, tok = tiny
    g = torch.Generator().manual_seed(1)
    rows = []
    for group in range(3):
        prompt = tok.encode(f"What is {group} + 7?" + " Think." * group)
        for j in range(4):
            response = torch.randint(3, len(tok), (3 + 5 * j,), generator=g).tolist()
            rows.append(TrainRow(group, prompt, response, None, j == 3, 0.0))
    return collate(rows, tok.pad_token_id)


@pytest.mark.parametrize("attention", ["sdpa", "cgrpo_sdpa"])
def test_each_distinct_prompt_runs_once_with_the_same_values_and_gradients(
    tiny_model_dir, grouped_batch, attention
):
    from transformers import AutoModelForCausalLM

    from cgrpo.model.attention import use_cgrpo_sdpa
    from cgrpo.model.logprobs import _inputs, _shared_prompt_hidden

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    if attention == "cgrpo_sdpa":
        assert use_cgrpo_sdpa(model)
    batch = grouped_batch
    decoder, _ = split_head(model)
    calls = []  # the decoder's input shapes, call by call
    hook = decoder.register_forward_hook(
        lambda m, a, k, out: calls.append(tuple(k["input_ids"].shape)), with_kwargs=True
    )
    try:
        with torch.no_grad():
            hidden = _shared_prompt_hidden(model, decoder, batch, _inputs(model, batch)[0])
        assert hidden is not None
        lp = batch.prompt_len
        assert calls == [(3, lp), (12, batch.response_ids.shape[1])]  # 3 prompts, then 12 rows
        full = _run(full_logits_forward, model, batch, 0.8, "loss")
        shared = _run(forward_response, model, batch, 0.8, "loss", chunk_tokens=16)
    finally:
        hook.remove()
    mask = batch.response_mask.bool()
    assert (full[0] - shared[0])[mask].abs().max() < 1e-5
    assert (full[1] - shared[1])[mask].abs().max() < 1e-5
    assert shared[0][~mask].abs().max() == 0
    assert full[2].keys() == shared[2].keys()
    for name, grad in full[2].items():
        scale = max(1.0, grad.abs().max().item())
        assert (grad - shared[2][name]).abs().max() / scale < 1e-5, name


def test_no_prompt_sharing_under_gradient_checkpointing_or_distinct_prompts(
    tiny_model_dir, grouped_batch, model_and_batch
):
    """transformers drops the cache in checkpointed layers, so the plain forward runs; a
    batch of distinct prompts has nothing to share."""
    from transformers import AutoModelForCausalLM

    from cgrpo.model.logprobs import _inputs, _shared_prompt_hidden

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    decoder, _ = split_head(model)
    distinct = model_and_batch[1]
    assert _shared_prompt_hidden(model, decoder, distinct, _inputs(model, distinct)[0]) is None
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    inputs = _inputs(model, grouped_batch)[0]
    assert _shared_prompt_hidden(model, decoder, grouped_batch, inputs) is None
    full = _run(full_logits_forward, model, grouped_batch, 1.0, "metric")
    checkpointed = _run(forward_response, model, grouped_batch, 1.0, "metric")
    mask = grouped_batch.response_mask.bool()
    assert (full[0] - checkpointed[0])[mask].abs().max() < 1e-5
