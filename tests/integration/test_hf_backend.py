"""The ``hf`` policy backend contract on a real tiny model."""

import pytest
import torch

from cgrpo.builtins.policies.hf import HFPolicy
from cgrpo.interfaces import BuildContext, PolicyBackend
from cgrpo.train.mixing import TrainRow, collate
from cgrpo.train.update import forward_response
from cgrpo.types import SamplingParams


@pytest.fixture(scope="module")
def backend(tiny):
    model, tok = tiny
    return HFPolicy(
        HFPolicy.Options(generation_batch_size=5), BuildContext(model=model, tokenizer=tok)
    )


def prompts(tok):
    texts = ["What is 1 + 2?", "What is 33 + 44? Think.", "Hi"]
    return [tok.encode(t) for t in texts]


def test_shapes_n_per_prompt_and_protocol(backend, tiny):
    _, tok = tiny
    assert isinstance(backend, PolicyBackend)
    out = backend.generate(prompts(tok), SamplingParams(n=4, max_new_tokens=12))
    assert [len(g) for g in out] == [4, 4, 4]
    for group in out:
        for c in group:
            assert len(c.token_ids) == len(c.logprobs) <= 12
            assert all(lp <= 0 for lp in c.logprobs)


def test_eos_handling(backend, tiny):
    _, tok = tiny
    out = backend.generate(prompts(tok), SamplingParams(n=6, max_new_tokens=16))
    for c in (c for g in out for c in g):
        if c.finish_reason == "stop":
            assert c.token_ids[-1] == tok.eos_token_id
            assert tok.eos_token_id not in c.token_ids[:-1]
        else:
            assert len(c.token_ids) == 16 and tok.eos_token_id not in c.token_ids


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logprobs_match_the_trainer_recompute(backend, tiny, temperature):
    model, tok = tiny
    torch.manual_seed(0)
    params = SamplingParams(n=3, max_new_tokens=10, temperature=temperature)
    ps = prompts(tok)
    out = backend.generate(ps, params)
    rows = [
        TrainRow(0, ps[i], c.token_ids, c.logprobs, False, 0.0)
        for i, g in enumerate(out)
        for c in g
    ]
    batch = collate(rows, tok.pad_token_id)
    with torch.no_grad():
        recomputed, _ = forward_response(model, batch, temperature, entropy=False)
    diff = ((recomputed - batch.old_logprobs).abs() * batch.response_mask).max().item()
    assert diff < 1e-4, f"sampler and trainer log-probs differ by {diff}"


def test_greedy_is_deterministic(backend, tiny):
    _, tok = tiny
    a = backend.generate(prompts(tok), SamplingParams(n=2, max_new_tokens=8, greedy=True))
    b = backend.generate(prompts(tok), SamplingParams(n=1, max_new_tokens=8, greedy=True))
    assert [g[0].token_ids for g in a] == [g[0].token_ids for g in b]
    assert all(g[0].token_ids == g[1].token_ids for g in a)
