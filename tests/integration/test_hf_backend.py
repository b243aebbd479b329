"""The ``hf`` policy backend contract on a real tiny model."""

import pytest
import torch

from cgrpo.algo.mixing import TrainRow, collate
from cgrpo.builtins.policies.decode import decode, static_cache
from cgrpo.builtins.policies.hf import HFPolicy, left_pad
from cgrpo.builtins.policies.token_draw import TokenDraw
from cgrpo.interfaces import BuildContext, PolicyBackend
from cgrpo.model.logprobs import forward_response
from cgrpo.types import SamplingParams


@pytest.fixture(scope="module")
def backend(tiny):
    model, tok = tiny
    return HFPolicy(
        HFPolicy.Options(generation_batch_size=5), BuildContext(model=model, tokenizer=tok)
    )


def max_recompute_difference(model, tok, ps, out, temperature) -> float:
    """Largest |sampler log-prob - trainer recompute| over the completions ``out`` of ``ps``."""
    rows = [
        TrainRow(0, ps[i], c.token_ids, c.logprobs, False, 0.0)
        for i, g in enumerate(out)
        for c in g
    ]
    batch = collate(rows, tok.pad_token_id)
    with torch.no_grad():
        recomputed, _ = forward_response(model, batch, temperature)
    return ((recomputed - batch.old_logprobs).abs() * batch.response_mask).max().item()


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


def test_several_eos_ids_cut_each_row_at_its_first(tiny):
    """With 20 of the 384 ids counted as EOS, about half of the 16-token samples stop early
    and half run to the limit (seeded): each is cut right after its first EOS, whichever
    id it is, and its log-probs are cut with it."""
    model, tok = tiny
    backend = HFPolicy(HFPolicy.Options(), BuildContext(model=model, tokenizer=tok))
    backend.eos_ids = list(range(100, 120))
    torch.manual_seed(3)
    out = backend.generate(prompts(tok), SamplingParams(n=6, max_new_tokens=16))
    completions = [c for g in out for c in g]
    eos = set(backend.eos_ids)
    for c in completions:
        assert len(c.logprobs) == len(c.token_ids)
        ids = c.token_ids
        if c.finish_reason == "stop":
            assert ids[-1] in eos and not eos & set(ids[:-1])
        else:
            assert len(ids) == 16 and not eos & set(ids)
    reasons = {c.finish_reason for c in completions}
    assert reasons == {"stop", "length"}
    assert {c.token_ids[-1] for c in completions if c.finish_reason == "stop"} - {100}


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logprobs_match_the_trainer_recompute(backend, tiny, temperature):
    model, tok = tiny
    torch.manual_seed(0)
    params = SamplingParams(n=3, max_new_tokens=10, temperature=temperature)
    ps = prompts(tok)
    out = backend.generate(ps, params)
    diff = max_recompute_difference(model, tok, ps, out, temperature)
    assert diff < 1e-4, f"sampler and trainer log-probs differ by {diff}"


def test_decoding_leaves_no_inference_tensors_behind(backend, tiny):
    """The backend decodes under ``torch.inference_mode``. What it hands over, and the
    model it trains next, must stay usable by autograd: an inference tensor cannot be
    saved for backward."""
    model, tok = tiny
    out = backend.generate(prompts(tok), SamplingParams(n=2, max_new_tokens=8))
    completions = [c for g in out for c in g]
    assert not any(c.logprobs.is_inference() for c in completions)
    assert not any(t.is_inference() for t in [*model.parameters(), *model.buffers()])
    weight = torch.ones(1, requires_grad=True)
    (weight * completions[0].logprobs).sum().backward()  # saves the log-probs
    assert weight.grad is not None


def test_greedy_is_deterministic(backend, tiny):
    _, tok = tiny
    a = backend.generate(prompts(tok), SamplingParams(n=2, max_new_tokens=8, greedy=True))
    b = backend.generate(prompts(tok), SamplingParams(n=1, max_new_tokens=8, greedy=True))
    assert [g[0].token_ids for g in a] == [g[0].token_ids for g in b]
    assert all(g[0].token_ids == g[1].token_ids for g in a)


def test_greedy_decode_equals_transformers_generate(backend, tiny):
    """cgrpo's decode loop (cache, left padding, position ids, EOS handling) picks the
    same tokens as transformers' greedy ``generate`` on the same left-padded batch."""
    model, tok = tiny
    ps = prompts(tok)
    out = backend.generate(ps, SamplingParams(n=1, max_new_tokens=12, greedy=True))
    ids, mask = left_pad(ps, tok.pad_token_id)
    with torch.no_grad():
        ref = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
            pad_token_id=tok.pad_token_id, eos_token_id=backend.eos_ids,
        )[:, ids.shape[1]:]  # fmt: skip
    for group, row in zip(out, ref, strict=True):
        ids_out = group[0].token_ids
        assert ids_out == row[: len(ids_out)].tolist()


def test_static_cache_decode_equals_the_growing_cache(tiny):
    """The static cache a compiled CUDA decode uses (full-length mask, longer than the
    decode needs), run eagerly on CPU: the same tokens and log-probs as the dynamic cache,
    seeded, so the draws are the same too."""
    from cgrpo.builtins.policies.seeded_sampling import row_seeds

    model, tok = tiny
    ids, mask = left_pad(prompts(tok), tok.pad_token_id)
    seeds = row_seeds([1, 2, 3], 1)
    eos = [tok.eos_token_id]
    with torch.no_grad():
        grow = decode(model, ids, mask, 10, TokenDraw(0.9, seeds=seeds), eos, 0)
        cache = static_cache(model, 3, ids.shape[1] + 10 + 5)
        fixed = decode(model, ids, mask, 10, TokenDraw(0.9, seeds=seeds), eos, 0, cache=cache)
    assert torch.equal(grow.tokens, fixed.tokens)
    assert torch.allclose(grow.logprobs, fixed.logprobs, atol=1e-5)


def test_the_decode_step_traces_into_one_graph_over_the_static_cache(tiny):
    """What ``decode: compiled`` hands to torch.compile on CUDA, traced here by dynamo alone
    (backend "eager", fullgraph: any graph break raises): the step over a static cache has
    no graph break (none would be captured whole in a CUDA graph otherwise) and decodes the
    same tokens as the eager loop."""
    from cgrpo.builtins.policies.decode import eager_forward

    model, tok = tiny
    ids, mask = left_pad(prompts(tok), tok.pad_token_id)
    step = torch.compile(eager_forward(model), backend="eager", fullgraph=True, dynamic=False)
    with torch.inference_mode():
        cache = static_cache(model, 3, 128)
        graph = decode(model, ids, mask, 6, TokenDraw(greedy=True), [10_000], 0, cache=cache,
                       step=step)  # fmt: skip
        eager = decode(model, ids, mask, 6, TokenDraw(greedy=True), [10_000], 0)
    assert torch.equal(graph.tokens, eager.tokens)


def test_token_utilization_counts_prompt_padding_and_ended_rows(tiny):
    """Prompts of 2 and 5 tokens (width 5) and 4 forced steps: 2 x (5 + 4) = 18 positions
    computed, 2 + 5 + 4 + 4 = 15 real tokens; the report resets."""
    model, tok = tiny
    backend = HFPolicy(HFPolicy.Options(), BuildContext(model=model, tokenizer=tok))
    backend.eos_ids = [len(tok) + 5]  # never sampled: both rows run all 4 steps
    backend.generate([[5, 6], [5, 6, 7, 8, 9]], SamplingParams(n=1, max_new_tokens=4))
    assert backend.telemetry() == {"token_utilization": 15 / 18}
    assert backend.telemetry() == {}


def test_model_generation_config_cannot_skew_the_sampled_distribution(tiny):
    """A shipped generation_config with a repetition penalty or a minimum length would make
    the sampler draw from a distribution the trainer never computes; it is neutralised, so
    the sampler's log-probs still equal the trainer's recompute."""
    model, tok = tiny
    saved = model.generation_config.to_dict()
    model.generation_config.repetition_penalty = 3.0
    model.generation_config.min_new_tokens = 6
    try:
        backend = HFPolicy(HFPolicy.Options(), BuildContext(model=model, tokenizer=tok))
        torch.manual_seed(0)
        ps = prompts(tok)
        out = backend.generate(ps, SamplingParams(n=3, max_new_tokens=10))
    finally:
        model.generation_config.repetition_penalty = saved.get("repetition_penalty", 1.0)
        model.generation_config.min_new_tokens = saved.get("min_new_tokens")
    assert max_recompute_difference(model, tok, ps, out, 1.0) < 1e-4


def test_seeded_samples_do_not_depend_on_the_batch(backend, tiny):
    """With seeds, a prompt's samples are the same alone, in a batch split over several
    generate calls (generation_batch_size 5 < 9 rows, grouped by length) or beside other
    prompts; the draw uses no global RNG; the log-probs still match the recompute."""
    model, tok = tiny
    ps = prompts(tok)
    params = SamplingParams(n=3, max_new_tokens=10, temperature=0.8, top_p=0.9)
    state = torch.random.get_rng_state()
    together = backend.generate(ps, params, seeds=[11, 12, 13])
    assert torch.equal(torch.random.get_rng_state(), state)
    for p, seed, group in zip(ps, [11, 12, 13], together, strict=True):
        alone = backend.generate([p], params, seeds=[seed])[0]
        assert [c.token_ids for c in alone] == [c.token_ids for c in group]
    assert len({tuple(c.token_ids) for c in together[1]}) > 1  # each sample its own stream
    other = backend.generate(ps, params, seeds=[11, 12, 99])
    assert [c.token_ids for c in other[0]] == [c.token_ids for c in together[0]]
    assert [c.token_ids for c in other[2]] != [c.token_ids for c in together[2]]
    assert max_recompute_difference(model, tok, ps, together, 0.8) < 1e-4
