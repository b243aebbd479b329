"""The ``vllm`` policy backend on the real engine: the same contract as ``hf``, weight
sync, and a sync that is broken on purpose."""

import asyncio

import pytest
import torch

from cgrpo.algo.mixing import TrainRow, collate
from cgrpo.builtins.policies.hf import HFPolicy
from cgrpo.config.validate import validate_recipe
from cgrpo.errors import TrainingError
from cgrpo.interfaces import BuildContext
from cgrpo.model.logprobs import forward_response
from cgrpo.types import SamplingParams
from tests.vllm.rollout_case import check_rollout_with_and_without_speculation


@pytest.fixture(scope="module")
def engine(tiny_model_dir, torch_one_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cgrpo.builtins.policies.vllm import VLLMPolicy

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    recipe = validate_recipe(
        {"model": {"path": str(tiny_model_dir), "max_length": 1024}, "data": {"task": "arithmetic"}}
    )
    backend = VLLMPolicy(
        VLLMPolicy.Options(kv_cache_memory_bytes=128 * 2**20),
        BuildContext(model=model, tokenizer=tok, recipe=recipe),
    )
    yield backend, model, tok
    backend.close()


def prompts(tok):
    return [tok.encode(t) for t in ("What is 1 + 2?", "What is 33 + 44? Think.", "Hi")]


def test_shapes_eos_and_logprob_agreement(engine):
    backend, model, tok = engine
    torch.manual_seed(0)
    ps = prompts(tok)
    out = backend.generate(ps, SamplingParams(n=4, max_new_tokens=12, temperature=0.8))
    assert [len(g) for g in out] == [4, 4, 4]
    rows = []
    for i, group in enumerate(out):
        for c in group:
            assert len(c.token_ids) == len(c.logprobs) <= 12
            if c.finish_reason == "stop":
                assert c.token_ids[-1] == tok.eos_token_id
                assert tok.eos_token_id not in c.token_ids[:-1]
            else:
                assert len(c.token_ids) == 12
            rows.append(TrainRow(0, ps[i], c.token_ids, c.logprobs, False, 0.0))
    batch = collate(rows, tok.pad_token_id)
    with torch.no_grad():
        trainer, _ = forward_response(model, batch, 0.8)
    diff = ((trainer - batch.old_logprobs).abs() * batch.response_mask).max().item()
    assert diff < 1e-3, f"vLLM and trainer log-probs differ by {diff}"


def test_seeds_make_samples_independent_of_batching(engine):
    backend, _, tok = engine
    ps = prompts(tok)
    params = SamplingParams(n=2, max_new_tokens=8)
    together = backend.generate(ps, params, seeds=[11, 22, 33])
    alone = backend.generate(ps[1:2], params, seeds=[22])
    assert [c.token_ids for c in together[1]] == [c.token_ids for c in alone[0]]


def test_stream_hands_over_groups_as_they_finish_with_the_tokens_of_one_generate_call(engine):
    """A prompt near max_model_len can only take 4 new tokens, so its group finishes
    steps before the others: the stream hands it over first. Every request keeps its seed,
    so the tokens equal those of vLLM's own ``LLM.generate`` on the same requests."""
    backend, _, tok = engine
    near_limit = (tok.encode("1 + 2 = 3. ") * 400)[:1020]
    ps = [*prompts(tok), near_limit]
    params = SamplingParams(n=3, max_new_tokens=12)
    seeds = [1, 2, 3, 4]
    batches = list(backend.generate_stream(ps, params, seeds=seeds))
    order = [[p for p, _ in batch] for batch in batches]
    assert order[0] == [3] and sorted(p for b in order for p in b) == [0, 1, 2, 3]
    got = {p: [c.token_ids for c in group] for batch in batches for p, group in batch}
    reference = backend.llm.generate(
        [{"prompt_token_ids": p} for p in ps],
        [backend.sampler._params(params, s) for s in seeds],
        use_tqdm=False,
    )
    assert [got[p] for p in range(4)] == [[list(o.token_ids) for o in r.outputs] for r in reference]
    assert all(len(g) == 4 for g in got[3])


def test_a_stream_closed_early_leaves_the_engine_idle(engine):
    backend, _, tok = engine
    near_limit = (tok.encode("1 + 2 = 3. ") * 400)[:1020]
    stream = backend.generate_stream([*prompts(tok), near_limit], SamplingParams(n=2))
    first = next(stream)
    assert [p for p, _ in first] == [3]
    assert backend.llm.llm_engine.has_unfinished_requests()
    stream.close()  # what an exception in the trainer does to the generator
    assert not backend.llm.llm_engine.has_unfinished_requests()
    again = backend.generate(prompts(tok), SamplingParams(n=2, max_new_tokens=4))
    assert [len(g) for g in again] == [2, 2, 2]


def test_weight_sync_makes_the_engine_follow_the_trainer(engine):
    backend, model, tok = engine
    ps = prompts(tok)
    greedy = SamplingParams(n=1, max_new_tokens=10, greedy=True)
    before = backend.generate(ps, greedy)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():  # a large change, so greedy outputs change
            torch.manual_seed(1)
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.5)
        backend.sync_weights(model)
        after = backend.generate(ps, greedy)
        hf = HFPolicy(HFPolicy.Options(), BuildContext(model=model, tokenizer=tok))
        expected = hf.generate(ps, greedy)
        assert [g[0].token_ids for g in after] == [g[0].token_ids for g in expected]
        assert [g[0].token_ids for g in after] != [g[0].token_ids for g in before]
        assert backend.telemetry()["sync_logprob_diff_max"] < 1e-3
    finally:
        model.load_state_dict(saved)
        backend.sync_weights(model)


def test_a_broken_sync_fails_loudly(engine, monkeypatch):
    backend, model, tok = engine
    backend.generate(prompts(tok), SamplingParams(n=1, max_new_tokens=6))  # a probe sequence
    real = model.state_dict

    def stale_half(*args, **kwargs):  # "forgets" to send most layers: engine keeps old ones
        state = real(*args, **kwargs)
        return {k: (v * 3 if "mlp" in k else v) for k, v in state.items()}

    monkeypatch.setattr(model, "state_dict", stale_half)
    with pytest.raises(TrainingError, match="disagree"):
        backend.sync_weights(model)
    monkeypatch.setattr(model, "state_dict", lambda: {"no.such.weight": torch.zeros(3)})
    with pytest.raises(TrainingError, match="weight sync to the vLLM engine failed"):
        backend.sync_weights(model)
    monkeypatch.undo()
    backend.sync_weights(model)  # a correct sync works again


def test_lora_sync_sends_merged_weights(engine):
    """A LoRA policy on the same base: after a sync the engine samples from base + adapters
    (the probe inside sync_weights compares them; it raises above sync_tolerance)."""
    import copy

    from cgrpo.config.schema import LoraSpec
    from cgrpo.model.lora import attach_lora

    backend, model, tok = engine
    lora = attach_lora(copy.deepcopy(model), LoraSpec(r=4))
    with torch.no_grad():
        torch.manual_seed(2)
        for name, p in lora.named_parameters():
            if "lora_B" in name:  # adapters that change greedy outputs
                p.normal_(0, 0.5)
    ps = prompts(tok)
    greedy = SamplingParams(n=1, max_new_tokens=10, greedy=True)
    before = backend.generate(ps, greedy)
    try:
        backend.sync_weights(lora)
        assert backend.telemetry()["sync_logprob_diff_max"] < 1e-3
        after = backend.generate(ps, greedy)
        assert [g[0].token_ids for g in after] != [g[0].token_ids for g in before]
    finally:
        backend.sync_weights(model)  # leave the shared engine as the other tests expect


def _running_length_seed(backend, prompt, params) -> int:
    """A seed whose sample runs to max_new_tokens (no early EOS), so that a test can rely
    on the request still decoding (seeded: the async path samples the same tokens)."""
    for seed in range(50):
        if backend.generate([prompt], params, seeds=[seed])[0][0].finish_reason == "length":
            return seed
    raise AssertionError("every seed stopped early")


def test_sample_gives_generates_tokens_through_single_requests(engine):
    """n samples are n single-sequence requests with seeds seed + j (as vLLM splits them),
    so the per-group rollout samples what one batched generate call would."""
    backend, _, tok = engine
    ps, seeds = prompts(tok), [11, 22, 33]
    params = SamplingParams(n=3, max_new_tokens=8)
    batch = backend.generate(ps, params, seeds=seeds)

    async def main():
        return await asyncio.gather(
            *(backend.sample(p, params, s) for p, s in zip(ps, seeds, strict=True))
        )

    got = asyncio.run(main())
    assert [[c.token_ids for c in g] for g in got] == [[c.token_ids for c in g] for g in batch]
    assert {c.weight_version for g in got for c in g} == {backend.sampler.weight_version}


def test_a_request_joins_the_running_batch_and_a_cancelled_one_leaves_it(engine):
    """Continuous batching: a short request made while a long one decodes finishes first;
    a sync generate call in between (a critic sampling with the policy) steps the same
    engine without losing the async requests' outputs; a cancelled request is aborted."""
    backend, _, tok = engine
    ps = prompts(tok)
    long, short = SamplingParams(n=1, max_new_tokens=40), SamplingParams(n=1, max_new_tokens=3)
    seed = _running_length_seed(backend, ps[0], long)
    engine_ = backend.llm.llm_engine

    async def main():
        done = []

        async def go(prompt, params, s, tag):
            out = await backend.sample(prompt, params, s)
            done.append(tag)
            return out

        first = asyncio.ensure_future(go(ps[0], long, seed, "long"))
        for _ in range(4):  # the driver steps the long request meanwhile
            await asyncio.sleep(0)
        assert engine_.has_unfinished_requests()
        await go(ps[1], short, 1, "short")
        synced = backend.generate(ps[2:], short)  # steps the engine itself
        long_out = await first
        doomed = asyncio.ensure_future(backend.sample(ps[0], long, seed))
        for _ in range(3):
            await asyncio.sleep(0)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        return done, synced, long_out

    done, synced, long_out = asyncio.run(main())
    assert done == ["short", "long"]
    assert len(long_out[0].token_ids) == 40 and len(synced) == 1
    assert not engine_.has_unfinished_requests()


def test_the_per_group_rollout_on_the_engine_with_speculation(engine):
    """The rollout on the real engine: initial samples are the seeded generate's, and
    speculative refinement changes when work starts, never what is kept."""
    backend, _, tok = engine
    check_rollout_with_and_without_speculation(backend, tok, [tok.eos_token_id])
    assert not backend.llm.llm_engine.has_unfinished_requests()


def test_local_critic_on_a_second_frozen_vllm_engine(engine, tiny_model_dir):
    """A local critic with backend vllm runs beside the policy's engine in one process.

    Keep it the last test of this module: closing the second in-process engine tears down
    vLLM's global parallel state, and the shared engine cannot generate after it."""
    from cgrpo.plugins import get_registries
    from cgrpo.types import CritiqueRequest, Problem, Verdict

    critic = get_registries()["critic"].build(
        "local",
        {
            "path": str(tiny_model_dir),
            "backend": "vllm",
            "max_tokens": 8,
            "max_model_len": 1024,
            "kv_cache_memory_bytes": 64 * 2**20,
        },
        None,
    )
    assert critic.model is None  # only the engine holds the critic's weights
    reqs = [
        CritiqueRequest(
            Problem(str(i), f"What is {i} + 1?", str(i + 1)), "\\boxed{0}", Verdict(0.0, False)
        )
        for i in range(3)
    ]
    out = critic.critique(reqs)
    assert [c.critic for c in out] == ["local"] * 3
    assert all(0 < c.completion_tokens <= 9 for c in out)
    backend, _, tok = engine  # the policy's engine still works
    assert backend.generate(prompts(tok), SamplingParams(n=1, max_new_tokens=4))
