"""Packed micro-batches: the plan, the layout, and the same losses, metrics and gradients as
padded micro-batches for every loss aggregation, with KL, entropy, clipping and TIS."""

import copy
import dataclasses
import math
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


def test_a_packed_batch_carries_the_demonstration_mask_to_the_same_loss():
    """One group under prompt [5, 6]: an initial response [7, 8] (old log-prob -1 each), a
    demonstration [9] and a refinement [10], advantage 0.5 each. Given the same (B, T)
    log-probs, the packed and the padded batch give the loss the same masks:

    initial tokens: ratio exp(-1 - -1) = 1, loss -0.5 * 1 = -0.5 each (no clip at 1);
    demonstration:  p = 0.5, f = p / (p + 0.5) = 0.5 (its gamma), loss -0.5 * 0.5 = -0.25;
    refinement:     p = 0.5, f = p / (p + 0.1) = 0.8333, loss -0.4167;
    token mean: (-0.5 - 0.5 - 0.25 - 0.4167) / 4 = -0.41667."""
    from cgrpo.algo.loss import policy_loss
    from cgrpo.algo.mixing import collate

    rows = [
        TrainRow(0, [5, 6], [7, 8], [-1.0, -1.0], False, 0.0, 0.5),
        TrainRow(0, [5, 6], [9], None, True, 1.0, 0.5),
        TrainRow(0, [5, 6], [10], None, True, 1.0, 0.5),
    ]
    rows[1].is_demonstration = True
    packed, padded = collate_packed(rows, pad_id=0), collate(rows, pad_id=0)
    assert packed.demonstration_mask.tolist() == [[0, 0], [1, 0], [0, 0]]
    assert packed.input_ids.tolist() == [5, 6, 7, 8, 9, 10]  # the prompt once, for all three
    logprobs = torch.tensor([[-1.0, -1.0], [math.log(0.5), 0.0], [math.log(0.5), 0.0]])
    config = LossConfig(
        aggregation="token_mean", shaping_gamma=0.1, demonstration_gamma=0.5, entropy_coef=0.0
    )
    losses = []
    for batch in (packed, padded):
        out = policy_loss(
            logprobs, batch.old_logprobs, batch.advantages, batch.response_mask,
            batch.refinement_mask, config, demonstration_mask=batch.demonstration_mask,
        )  # fmt: skip
        assert out.metrics["demonstration/token_prob_mean"] == pytest.approx(0.5)
        losses.append(out.loss.item())
    expected = (-0.5 - 0.5 - 0.25 - 0.5 * 0.5 / 0.6) / 4
    assert losses == pytest.approx([expected, expected], abs=1e-6)


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


def _assert_same_update(padded, g_padded, packed, g_packed):
    """Every loss and per-token metric to 1e-6, every gradient to 1e-6; returns the keys."""
    compared = {k for k in padded if not k.startswith("update/")}
    assert compared == {k for k in packed if not k.startswith("update/")}
    for key in compared:
        assert packed[key] == pytest.approx(padded[key], abs=1e-6, rel=1e-6), key
    for a, b in zip(g_padded, g_packed, strict=True):
        assert (a - b).abs().max() <= 1e-6
    return compared


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
    compared = _assert_same_update(padded, g_padded, packed, g_packed)
    assert {"loss/kl", "loss/entropy_bonus", "sampler/logprob_diff_max"} <= compared


def test_packed_update_equals_padded_with_demonstration_rows(packable, ragged_rows, tiny):
    """A demonstration (LUFFY) per group, under the group's prompt: packed micro-batches
    carry its mask, so its tokens take their own gamma (0.5, not the refinement's 0.1) and
    keep their metrics; losses, metrics and gradients agree to 1e-6 in float32."""
    rng = random.Random(2)
    rows = copy.deepcopy(ragged_rows)
    for g, n in enumerate([60, 5, 23]):
        ids = [rng.randrange(3, len(tiny[1])) for _ in range(n)]
        demo = TrainRow(g, rows[4 * g].prompt_ids, ids, None, True, 1.0)
        demo.is_demonstration, demo.advantage = True, 0.6 - 0.2 * g
        rows.append(demo)
    loss = LossConfig(aggregation="token_mean", entropy_coef=0.01, demonstration_gamma=0.5)
    padded, g_padded = _update(packable, rows, loss, None)
    packed, g_packed = _update(packable, rows, loss, None, micro_batch_tokens=200)
    compared = _assert_same_update(padded, g_padded, packed, g_packed)
    assert {"demonstration/shaped_weight_mean", "entropy/demonstration"} <= compared
    # without the mask the demonstrations would be refinements: another loss
    plain, _ = _update(packable, rows, dataclasses.replace(loss, demonstration_gamma=0.1), None,
                       micro_batch_tokens=200)  # fmt: skip
    assert abs(plain["loss/policy"] - packed["loss/policy"]) > 1e-4


def test_fine_tuning_rows_pack_like_padded(packable, ragged_rows, tiny):
    """The fine-tuning objectives' step (fine_tune_loss: cross-entropy, token mean, advantage
    1 on off-policy rows) under micro_batch_tokens: RAFT-like rows sharing a prompt and
    critique-FT-like rows each under a prompt of its own, packed = padded to 1e-6."""
    from cgrpo.train.fine_tune import fine_tune_loss

    rng = random.Random(3)
    rows = []
    for row in ragged_rows[:6]:
        ft = TrainRow(row.group, row.prompt_ids, row.response_ids, None, True, 1.0)
        ft.advantage = 1.0
        rows.append(ft)
    for g in range(3):  # a prompt per row: (question, response) -> critique
        prompt = [rng.randrange(3, len(tiny[1])) for _ in range(12 + 5 * g)]
        target = [rng.randrange(3, len(tiny[1])) for _ in range(9 + 20 * g)]
        crit = TrainRow(g, prompt, target, None, True, 0.0)
        crit.advantage = 1.0
        rows.append(crit)
    loss = fine_tune_loss(LossConfig(entropy_coef=0.0))
    padded, g_padded = _update(packable, rows, loss, None)
    packed, g_packed = _update(packable, rows, loss, None, micro_batch_tokens=120)
    _assert_same_update(padded, g_padded, packed, g_packed)


def test_the_empty_fine_tuning_row_runs_a_zero_backward_packed(packable):
    """A rank without fine-tuning rows trains one empty row (train/loop.py Trainer.update)
    so its collectives stay in step: packed, the forward runs on its one-token prompt and
    the loss (other ranks' 5 tokens as the mini-batch count) is 0 with a zero gradient."""
    from cgrpo.algo.loss import policy_loss
    from cgrpo.train.fine_tune import fine_tune_loss

    batch = collate_packed([TrainRow(0, [0], [], None, True, 0.0, 0.0)], pad_id=0)
    assert batch.input_ids.tolist() == [0] and batch.predict_index.numel() == 0
    packable.zero_grad(set_to_none=True)
    lp, _ = forward_packed(packable, batch, 1.0)
    cfg = fine_tune_loss(LossConfig(entropy_coef=0.0))
    out = policy_loss(
        lp, None, batch.advantages, batch.response_mask, batch.refinement_mask, cfg,
        num_tokens=5.0,
    )  # fmt: skip
    out.loss.backward()
    assert out.loss.item() == 0.0
    grads = [p.grad for p in packable.parameters() if p.grad is not None]
    assert grads and all(g.abs().max() == 0 for g in grads)
    packable.zero_grad(set_to_none=True)


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
