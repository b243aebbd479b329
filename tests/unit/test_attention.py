"""``cgrpo_sdpa``: masked grouped-query attention on CPU without copying keys and values,
the same numbers as transformers' ``sdpa`` (which repeats each KV head first)."""

import pytest
import torch

from cgrpo.model.attention import NAME, use_cgrpo_sdpa


@pytest.fixture(scope="module")
def twins(tiny_model_dir):
    """The tiny model (4 query heads, 2 KV heads) twice: sdpa, and switched."""
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    switched = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert plain.config._attn_implementation == "sdpa"
    assert plain.config.num_key_value_heads < plain.config.num_attention_heads
    assert use_cgrpo_sdpa(switched)
    assert switched.config._attn_implementation == NAME
    return plain, switched


def padded_batch(rows=6, width=24):
    torch.manual_seed(0)
    ids = torch.randint(5, 300, (rows, width))
    mask = torch.ones_like(ids)
    for i in range(rows):
        mask[i, : 3 * i] = 0  # left padding of different lengths: a mask is needed
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def test_forward_and_gradients_equal_sdpa_with_padding(twins):
    plain, switched = twins
    ids, mask, pos = padded_batch()
    real = mask.bool()
    losses = []
    for model in (plain, switched):
        model.zero_grad()
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        loss = logits[real].logsumexp(-1).sum()
        loss.backward()
        losses.append((logits[real].detach(), [p.grad.clone() for p in model.parameters()]))
    (a, grads_a), (b, grads_b) = losses
    assert torch.allclose(a, b, atol=1e-6, rtol=0)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        assert torch.allclose(ga, gb, atol=1e-5, rtol=1e-5)


def test_padded_generation_equals_sdpa_step_by_step(twins):
    """Prefill and every decode step (one query against the cache) give the same logits."""
    plain, switched = twins
    ids, mask, _ = padded_batch()
    kwargs = dict(
        max_new_tokens=12,
        do_sample=False,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    with torch.no_grad():
        a = plain.generate(input_ids=ids, attention_mask=mask, **kwargs)
        b = switched.generate(input_ids=ids, attention_mask=mask, **kwargs)
    assert torch.equal(a.sequences, b.sequences)
    for step_a, step_b in zip(a.logits, b.logits, strict=True):
        assert torch.allclose(step_a, step_b, atol=1e-5, rtol=0)


def test_saved_config_does_not_name_the_cgrpo_attention(twins, tmp_path):
    """Checkpoints load anywhere (vLLM, plain transformers): the switch is not saved."""
    _, switched = twins
    switched.save_pretrained(tmp_path)
    assert NAME not in (tmp_path / "config.json").read_text()


def test_models_without_sdpa_are_left_alone(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    eager = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    assert not use_cgrpo_sdpa(eager)
    assert eager.config._attn_implementation == "eager"
