"""Packed micro-batches: the plan, the layout, and the same losses, metrics and gradients as
padded micro-batches for every loss aggregation, with KL, entropy, clipping and TIS."""

import copy
import random

import pytest
import torch

from cgrpo.algo.loss import LossConfig
from cgrpo.algo.mixing import TrainRow
from cgrpo.algo.packing import collate_packed, plan_packs
from cgrpo.model.packing import forward_packed, packing_problem
from cgrpo.train.update import UpdateSettings, update_policy


def test_plan_counts_a_shared_prompt_once():
    # prompt "a" (10 tokens) with responses 20, 30, 5; prompt "b" (4) with 50
    rows = [("a", 10, 20), ("b", 4, 50), ("a", 10, 30), ("a", 10, 5)]
    # "a": 10 + 20 + 30 + 5 = 65 tokens; "b" would add 54 -> 119 > 100: a second pack
    assert plan_packs(rows, 100) == [[0, 2, 3], [1]]
    # at 119 everything fits one pack; rows are taken grouped by prompt
    assert plan_packs(rows, 119) == [[0, 2, 3, 1]]
    # at 40: [0] (30), then row 2 adds 30 -> 60 > 40: its own pack pays its prompt again
    assert plan_packs(rows, 40) == [[0], [2], [3], [1]]


def test_plan_never_splits_a_row_and_keeps_every_row_once():
    rng = random.Random(0)
    rows = [(i // 4, rng.randint(1, 30), rng.randint(0, 300)) for i in range(50)]
    plan = plan_packs(rows, 256)
    assert sorted(i for pack in plan for i in pack) == list(range(50))
    for pack in plan:
        prompts = {rows[i][0]: rows[i][1] for i in pack}
        tokens = sum(prompts.values()) + sum(rows[i][2] for i in pack)
        assert tokens <= 256 or len(pack) == 1  # a row over the budget alone
    with pytest.raises(ValueError):
        plan_packs(rows, 0)


def test_layout_worked_example():
    """Two rows share the prompt [5, 6, 7]; responses [8, 9] and [10]."""
    rows = [
        TrainRow(0, [5, 6, 7], [8, 9], [-1.0, -2.0], False, 1.0),
        TrainRow(0, [5, 6, 7], [10], None, True, 0.0),
    ]
    b = collate_packed(rows, pad_id=0)
    assert b.input_ids.tolist() == [5, 6, 7, 8, 9, 10]
    assert b.position_ids.tolist() == [0, 1, 2, 3, 4, 3]  # the second response restarts at 3
    assert b.q_bounds == ((0, 3), (3, 5), (5, 6))
    # keys: the prompt; the prompt and response 1; the prompt and response 2
    assert b.k_bounds == ((0, 3), (3, 8), (8, 12))
    assert b.kv_index.tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 2, 5]
    # token 8 and token 10 are predicted by the prompt's last position (2), token 9 by 8's (3)
    assert b.predict_index.tolist() == [2, 3, 2]
    assert b.response_ids.tolist() == [[8, 9], [10, 0]]
    assert b.refinement_mask.tolist() == [[0, 0], [1, 0]]
    assert b.token_counts == (6, 6)
    with pytest.raises(ValueError, match="prompt"):
        collate_packed([TrainRow(0, [], [1], None, False, 0.0)], 0)


def test_a_prompt_with_one_row_is_one_sequence_with_it():
    """Prompt [5, 6] with response [7, 8, 9] alone, then [20] with [21]: two sequences,
    each attending to its own tokens only; token 7 is predicted by position 1."""
    rows = [
        TrainRow(0, [5, 6], [7, 8, 9], None, False, 0.0),
        TrainRow(1, [20], [21], None, False, 0.0),
    ]
    b = collate_packed(rows, pad_id=0)
    assert b.input_ids.tolist() == [5, 6, 7, 8, 9, 20, 21]
    assert b.position_ids.tolist() == [0, 1, 2, 3, 4, 0, 1]
    assert b.q_bounds == b.k_bounds == ((0, 5), (5, 7))
    assert b.kv_index.tolist() == list(range(7))
    assert b.predict_index.tolist() == [1, 2, 3, 5]


@pytest.fixture(scope="module")
def packable(tiny):
    """The tiny model (2 query heads, 1 key/value head) switched to cgrpo's attention, as
    model loading does."""
    from cgrpo.model.attention import use_cgrpo_sdpa

    model = copy.deepcopy(tiny[0])
    assert use_cgrpo_sdpa(model)
    return model


@pytest.fixture(scope="module")
def ragged_rows(tiny):
    """Three groups (prompts of 3-9 tokens) of four rows whose responses run from 1 to 150
    tokens, the last of each group a refinement; one empty response; old and sampler
    log-probs away from the model's, so clipping and TIS do something."""
    _, tok = tiny
    rng = random.Random(1)
    rows = []
    for g in range(3):
        prompt = [rng.randrange(3, len(tok)) for _ in range(rng.randint(3, 9))]
        for j, n in enumerate([1, 150, 7, 40] if g != 1 else [0, 3, 90, 12]):
            ids = [rng.randrange(3, len(tok)) for _ in range(n)]
            refine = j == 3
            old = None if refine else [-6.0 + rng.random() for _ in range(n)]
            row = TrainRow(g, prompt, ids, old, refine, float(j == 1))
            row.advantage = (j == 1) - 0.25 + 0.1 * g
            row.sampler_logprobs = None if refine else [x - 0.05 for x in old]
            rows.append(row)
    return rows


class _Recorder:
    """The optimizer's place in update_policy: keeps each gradient at ``step``."""

    def __init__(self, model):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.param_groups = [{"lr": 0.0}]

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None

    def step(self):
        self.grads = [p.grad.clone() for p in self.params]


def _update(model, rows, loss, ref, **micro):
    settings = UpdateSettings(1, micro.pop("size", 4), 1.0, loss, grad_clip=None, **micro)
    rec = _Recorder(model)
    metrics = update_policy(model, rec, None, rows, settings, pad_id=0, ref_model=ref)
    return metrics, rec.grads


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "token_sum"])
def test_packed_update_equals_padded_for_every_aggregation(packable, ragged_rows, aggregation):
    """Losses (every ``loss/*`` term), the per-token metrics (ratio, clip fraction, TIS,
    entropy per kind, KL, the sampler mismatch) and every gradient agree to 1e-6 in
    float32; the padded run uses micro-batches of 4 rows, the packed one of 200 tokens, so
    the two cut the rows differently."""
    model = packable
    ref = copy.deepcopy(model).requires_grad_(False)
    with torch.no_grad():  # a reference that differs from the policy: KL is not zero
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p))
    loss = LossConfig(
        aggregation=aggregation,
        normalizer=150.0 if aggregation == "token_sum" else None,
        entropy_coef=0.01,
        kl_coef=0.1,
        tis_cap=2.0,
    )
    padded, g_padded = _update(model, ragged_rows, loss, ref)
    packed, g_packed = _update(model, ragged_rows, loss, ref, micro_batch_tokens=200)
    assert packed["update/token_utilization"] == 1.0
    assert padded["update/token_utilization"] < 0.7  # 1 to 150 tokens: much padding
    compared = {k for k in padded if not k.startswith("update/")}
    assert compared == {k for k in packed if not k.startswith("update/")}
    assert {"loss/kl", "loss/entropy_bonus", "sampler/logprob_diff_max"} <= compared
    for key in compared:
        assert packed[key] == pytest.approx(padded[key], abs=1e-6, rel=1e-6), key
    for a, b in zip(g_padded, g_packed, strict=True):
        assert (a - b).abs().max() <= 1e-6


def test_packed_forward_under_gradient_checkpointing(packable, ragged_rows):
    """Checkpointed layers run attention again in backward, with the same layout."""
    model = packable
    loss = LossConfig(aggregation="token_mean", entropy_coef=0.0)
    plain, g_plain = _update(model, ragged_rows, loss, None, micro_batch_tokens=300)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        ckpt, g_ckpt = _update(model, ragged_rows, loss, None, micro_batch_tokens=300)
    finally:
        model.gradient_checkpointing_disable()
    assert ckpt["loss/total"] == pytest.approx(plain["loss/total"], abs=1e-6)
    for a, b in zip(g_plain, g_ckpt, strict=True):
        assert (a - b).abs().max() <= 1e-6


def test_models_that_cannot_pack_are_refused(tiny_model_dir, packable, ragged_rows):
    from transformers import AutoModelForCausalLM

    model = packable
    assert packing_problem(model) is None
    eager = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    assert "'eager'" in packing_problem(eager)
    # its attention never sees the layout: the forward notices and refuses
    with pytest.raises(RuntimeError, match="0 of 2 attention layers"):
        forward_packed(eager, collate_packed(ragged_rows[:2], 0), 1.0)
    windowed = copy.deepcopy(model)
    windowed.config.layer_types = ["sliding_attention", "full_attention"]
    assert "sliding_attention" in packing_problem(windowed)


def _segments_in_token_layout(causal_alignment: str):
    """A varlen-style kernel ((tokens, heads, d) in, out) written with SDPA per segment,
    its causal mask aligned at the end (correct) or at the start (the other convention)."""
    import torch.nn.functional as F

    def kernel(q, k, v, layout, scale):
        outs = []
        for (q0, q1), (k0, k1) in zip(layout.q_bounds, layout.k_bounds, strict=True):
            lq, lk = q1 - q0, k1 - k0
            shift = lk - lq if causal_alignment == "end" else 0
            mask = torch.ones(lq, lk, dtype=torch.bool).tril(shift)
            qs, ks, vs = (t.transpose(0, 1) for t in (q[q0:q1], k[k0:k1], v[k0:k1]))
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, enable_gqa=True)
            outs.append(o.transpose(0, 1))
        return torch.cat(outs)

    return kernel


def test_a_varlen_kernel_is_used_only_when_it_matches_the_reference():
    """The check each CUDA kernel passes before use: values and gradients against the
    segment loop, on a prompt and a response that also sees it. A kernel that aligns the
    causal mask at the start (another library's convention) would let a response token
    miss its own last keys: it is refused. On CPU no kernel is tried."""
    from cgrpo.model.packing import _probe, varlen_kernel

    cpu = torch.device("cpu")
    assert _probe(_segments_in_token_layout("end"), cpu, torch.float32)
    assert not _probe(_segments_in_token_layout("start"), cpu, torch.float32)
    with torch.no_grad():  # the first packed forward may be a no-grad recompute
        assert _probe(_segments_in_token_layout("end"), cpu, torch.float32)
    assert varlen_kernel(cpu, torch.bfloat16) is None
