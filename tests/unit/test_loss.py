"""The policy loss on small hand-built tensors; expected values worked out in comments.

Covers ALGORITHM.md section 7, items 4-9.
"""

import math

import pytest
import torch

from cgrpo.algo.loss import (
    LossConfig,
    aggregate,
    entropy_from_logits,
    initial_token_loss,
    kl_penalty,
    policy_loss,
    shaped_token_loss,
    token_logprobs,
)

NO_EXTRAS = dict(entropy_coef=0.0, kl_coef=0.0)


def cfg(**kw):
    base = dict(
        clip_low=None,
        clip_high=None,
        shaping_gamma=0.1,
        aggregation="token_sum",
        normalizer=4.0,
        **NO_EXTRAS,
    )
    base.update(kw)
    return LossConfig(**base)


def test_refinement_loss_is_minus_a_times_shaped_p_and_ignores_old():
    # p = 0.3, gamma = 0.1 -> f = 0.3 / 0.4 = 0.75 ; A = 2 -> loss = -1.5 per token
    logp = torch.log(torch.tensor([[0.3, 0.3]]))
    loss, _p, _ = shaped_token_loss(logp, torch.tensor([[2.0]]), "p_over_p_plus_gamma", 0.1)
    assert loss.tolist()[0] == pytest.approx([-1.5, -1.5])
    mask = torch.ones(1, 2)
    a = policy_loss(logp, torch.zeros(1, 2), torch.tensor([2.0]), mask, mask, cfg())
    b = policy_loss(logp, torch.full((1, 2), -7.0), torch.tensor([2.0]), mask, mask, cfg())
    # token_sum / 4: (-1.5 - 1.5) / 4 = -0.75, whatever old_logprobs are
    assert a.loss.item() == pytest.approx(-0.75)
    assert b.loss.item() == pytest.approx(-0.75)


def test_refinement_gradient_wrt_logp_at_gamma_is_quarter_a():
    # d/dlogp [-A p/(p+g)] = -A g p/(p+g)^2 ; at p = g: -A g^2 / (4 g^2) = -A/4
    a = 1.6
    logp = torch.tensor([[math.log(0.1)]], requires_grad=True)
    loss, _, weight = shaped_token_loss(logp, torch.tensor([[a]]), "p_over_p_plus_gamma", 0.1)
    loss.sum().backward()
    assert logp.grad.item() == pytest.approx(-a * 0.25, rel=1e-5)
    assert weight.item() == pytest.approx(0.25, rel=1e-5)


def test_refinement_without_shaping_is_plain_policy_gradient():
    # loss -A p/sg(p) has value -A and gradient -A wrt log p
    logp = torch.tensor([[math.log(1e-4)]], requires_grad=True)
    loss, _, weight = shaped_token_loss(logp, torch.tensor([[3.0]]), "none")
    loss.sum().backward()
    assert loss.item() == pytest.approx(-3.0)
    assert logp.grad.item() == pytest.approx(-3.0)
    assert weight.item() == 1.0


def test_shaping_p_is_minus_a_times_p_with_gradient_minus_a_p():
    """The released code's off_policy_reshape=no_reshape: loss -A p, so d/dlogp = -A p
    (against 'none': value -A, gradient -A whatever p)."""
    for p in (1e-4, 0.3, 0.9):
        logp = torch.tensor([[math.log(p)]], requires_grad=True)
        loss, _, weight = shaped_token_loss(logp, torch.tensor([[2.0]]), "p")
        loss.sum().backward()
        assert loss.item() == pytest.approx(-2.0 * p, rel=1e-5)
        assert logp.grad.item() == pytest.approx(-2.0 * p, rel=1e-5)
        assert weight.item() == pytest.approx(p, rel=1e-5)
    # through policy_loss: refinement tokens p = 0.3 and 0.6, A = 1: -(0.3 + 0.6) / 4
    logp = torch.log(torch.tensor([[0.3, 0.6]]))
    mask = torch.ones(1, 2)
    out = policy_loss(logp, None, torch.tensor([1.0]), mask, mask, cfg(shaping="p"))
    assert out.loss.item() == pytest.approx(-0.9 / 4)


def test_initial_loss_equals_minus_a_when_p_equals_old():
    logp = torch.log(torch.tensor([[0.2, 0.7]]))
    loss, ratio, clipped = initial_token_loss(logp, logp.clone(), torch.tensor([[0.5]]), 0.2, 0.2)
    assert loss.tolist()[0] == pytest.approx([-0.5, -0.5])
    assert ratio.tolist()[0] == pytest.approx([1.0, 1.0])
    assert not clipped.any()


def test_initial_loss_clipping_symmetric_asymmetric_and_off():
    old = torch.log(torch.tensor([[0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.8, 0.2]]))  # ratios 1.6 and 0.4
    pos, neg = torch.tensor([[1.0]]), torch.tensor([[-1.0]])
    # A > 0, r = 1.6 > 1.2: clipped to -1.2 ; r = 0.4: unclipped -0.4 (max(-0.4, -0.8))
    loss, _, clipped = initial_token_loss(new, old, pos, 0.2, 0.2)
    assert loss.tolist()[0] == pytest.approx([-1.2, -0.4])
    assert clipped.tolist()[0] == [True, False]
    # A < 0, r = 0.4 < 0.8: max(0.4, 0.8) = 0.8 (clipped) ; r = 1.6: 1.6 unclipped
    loss, _, clipped = initial_token_loss(new, old, neg, 0.2, 0.2)
    assert loss.tolist()[0] == pytest.approx([1.6, 0.8])
    assert clipped.tolist()[0] == [False, True]
    # asymmetric: high 0.28 -> upper bound 1.28
    loss, _, _ = initial_token_loss(new, old, pos, 0.2, 0.28)
    assert loss[0, 0].item() == pytest.approx(-1.28)
    # off (released code): -A r
    loss, _, clipped = initial_token_loss(new, old, pos, None, None)
    assert loss.tolist()[0] == pytest.approx([-1.6, -0.4])
    assert not clipped.any()


def test_all_wrong_group_gives_zero_policy_loss_and_gradient():
    logp = torch.randn(4, 3).clamp(max=-0.1).requires_grad_()
    mask = torch.ones(4, 3)
    refine = torch.zeros(4, 3)
    refine[3] = 1
    out = policy_loss(logp, logp.detach(), torch.zeros(4), mask, refine, cfg())
    out.loss.backward()
    assert out.loss.item() == 0.0
    assert torch.count_nonzero(logp.grad) == 0


def test_masks_route_tokens_to_the_right_loss_and_padding_is_ignored():
    # row 0: initial, 2 tokens + 1 pad ; row 1: refinement, 1 token + 2 pads
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.9], [0.1, 0.9, 0.9]]))
    old = torch.log(torch.tensor([[0.25, 0.5, 0.1], [0.5, 0.1, 0.1]]))
    resp = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    refine = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    adv = torch.tensor([1.0, 2.0])
    # initial: -1 * (2 + 1) = -3 ; refinement: -2 * 0.1/0.2 = -1 ; sum -4 / normalizer 4 = -1
    out = policy_loss(logp, old, adv, resp, refine, cfg())
    assert out.loss.item() == pytest.approx(-1.0)
    assert out.metrics["refine/token_prob_mean"] == pytest.approx(0.1)
    assert out.metrics["ratio/mean"] == pytest.approx(1.5)


def test_constant_divisor_duplicate_sequence_doubles_its_gradient():
    logp = torch.log(torch.tensor([[0.3, 0.6]])).requires_grad_()
    mask, zero = torch.ones(1, 2), torch.zeros(1, 2)
    policy_loss(logp, logp.detach(), torch.tensor([1.0]), mask, zero, cfg()).loss.backward()
    single = logp.grad.clone()

    pair = torch.log(torch.tensor([[0.3, 0.6], [0.3, 0.6]])).requires_grad_()
    mask2, zero2 = torch.ones(2, 2), torch.zeros(2, 2)
    policy_loss(pair, pair.detach(), torch.tensor([1.0, 1.0]), mask2, zero2, cfg()).loss.backward()
    assert torch.allclose(pair.grad[0], single[0])  # each copy keeps the full gradient
    assert torch.allclose(pair.grad.sum(0), 2 * single[0])


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "token_sum"])
def test_micro_batches_accumulate_to_the_full_batch_gradient(mode):
    torch.manual_seed(0)
    logp = (-torch.rand(4, 5) * 3).requires_grad_()
    old = logp.detach() + 0.05 * torch.randn(4, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0.0]])
    refine = torch.zeros(4, 5)
    refine[1] = mask[1]
    adv = torch.tensor([0.5, -1.0, 2.0, 0.3])
    c = cfg(aggregation=mode, clip_low=0.2, clip_high=0.2)
    policy_loss(logp, old, adv, mask, refine, c).loss.backward()
    full = logp.grad.clone()
    logp.grad = None
    totals = dict(num_tokens=float(mask.sum()), num_seqs=4.0)
    for rows in (slice(0, 2), slice(2, 4)):
        policy_loss(
            logp[rows], old[rows], adv[rows], mask[rows], refine[rows], c, **totals
        ).loss.backward()
    assert torch.allclose(logp.grad, full, atol=1e-6)


def test_aggregation_modes_by_hand():
    values = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert aggregate(values, mask, "token_mean").item() == pytest.approx(2.0)  # 6 / 3
    # seq means 1.5 and 3 -> 2.25
    assert aggregate(values, mask, "seq_mean_token_mean").item() == pytest.approx(2.25)
    assert aggregate(values, mask, "token_sum", normalizer=10).item() == pytest.approx(0.6)
    with pytest.raises(ValueError, match="normalizer"):
        aggregate(values, mask, "token_sum")


def test_entropy_bonus_lowers_the_loss_by_coef_times_entropy():
    logits = torch.zeros(1, 2, 4)  # uniform over 4 tokens: entropy ln 4 each
    ent = entropy_from_logits(logits)
    assert ent.tolist()[0] == pytest.approx([math.log(4)] * 2)
    logp = token_logprobs(logits, torch.tensor([[0, 1]]))
    mask = torch.ones(1, 2)
    base = policy_loss(logp, logp, torch.zeros(1), mask, torch.zeros(1, 2), cfg(), entropy=ent)
    for how, expected in [
        ("token_mean", math.log(4)),  # (2 ln4) / 2 tokens
        ("micro_batch_token_mean", math.log(4)),  # one micro-batch: the same mean
        ("same_as_policy", math.log(4) / 2),  # token_sum / normalizer 4: 2 ln4 / 4
    ]:
        c = cfg(entropy_coef=0.001, entropy_aggregation=how)
        bonus = policy_loss(logp, logp, torch.zeros(1), mask, torch.zeros(1, 2), c, entropy=ent)
        assert base.loss.item() - bonus.loss.item() == pytest.approx(0.001 * expected), how
    assert bonus.metrics["entropy/initial"] == pytest.approx(math.log(4))


# A mini-batch of 4 rows with 2, 2, 1 and 3 response tokens (8 in all), policy aggregation
# token_sum over normalizer 4: every token's policy loss has weight 1/4. The gradient of the
# loss wrt a token's entropy is -coef x that token's entropy weight.
LENGTHS = [2, 2, 1, 3]


def _entropy_weights(how: str, micro_batches: list[list[int]], budget_tokens=None):
    """-d loss / d H per token over the whole mini-batch, accumulated over micro-batches."""
    mask = torch.tensor([[1.0] * n + [0.0] * (3 - n) for n in LENGTHS])
    ent = torch.ones(4, 3, requires_grad=True)
    logp = torch.full((4, 3), -1.0)
    c = cfg(entropy_coef=1.0, entropy_aggregation=how)
    for rows in micro_batches:
        tokens = None if budget_tokens is None else torch.tensor(budget_tokens)[rows]
        out = policy_loss(
            logp[rows], logp[rows], torch.zeros(len(rows)), mask[rows], mask[rows] * 0, c,
            entropy=ent[rows], num_tokens=8.0, num_seqs=4.0, micro_batch_tokens=tokens,
        )  # fmt: skip
        out.loss.backward()
    return (-ent.grad * mask).tolist()


def test_entropy_weight_relative_to_the_policy_term_by_aggregation():
    pairs, singles = [[0, 1], [2, 3]], [[0], [1], [2], [3]]
    # token_mean: 1/8 per token whatever the micro-batches; relative to the policy's 1/4: 1/2
    for plan in (pairs, singles):
        assert _entropy_weights("token_mean", plan) == [
            [1 / 8, 1 / 8, 0], [1 / 8, 1 / 8, 0], [1 / 8, 0, 0], [1 / 8, 1 / 8, 1 / 8]
        ]  # fmt: skip
    # released code: one token mean per micro-batch. Pairs hold 4 tokens each: 1/4 per token,
    # relative weight 1 (twice token_mean's); single rows: 1/2, 1/2, 1, 1/3, relative 2, 2,
    # 4, 4/3: the bonus weighs more the more micro-batches there are
    assert _entropy_weights("micro_batch_token_mean", pairs) == [
        [1 / 4, 1 / 4, 0], [1 / 4, 1 / 4, 0], [1 / 4, 0, 0], [1 / 4, 1 / 4, 1 / 4]
    ]  # fmt: skip
    got = [w for row in _entropy_weights("micro_batch_token_mean", singles) for w in row]
    assert got == pytest.approx([1 / 2, 1 / 2, 0, 1 / 2, 1 / 2, 0, 1, 0, 0] + [1 / 3] * 3)
    # the released code's micro-batches given per row (here: rows {0, 1} and {2, 3}, 4 tokens
    # each) make the term independent of how this update cuts the rows
    assert _entropy_weights("micro_batch_token_mean", singles, [4, 4, 4, 4]) == [
        [1 / 4, 1 / 4, 0], [1 / 4, 1 / 4, 0], [1 / 4, 0, 0], [1 / 4, 1 / 4, 1 / 4]
    ]  # fmt: skip
    # same_as_policy: token_sum / 4, the policy term's own weight (relative weight 1)
    assert _entropy_weights("same_as_policy", singles)[3] == [1 / 4] * 3


def test_kl_aggregation_is_its_own_setting():
    # k1 = log(0.5 / 0.25) = ln 2 on each of 2 tokens; kl_coef 1, token_sum normalizer 4
    logp, ref = torch.log(torch.full((1, 2), 0.5)), torch.log(torch.full((1, 2), 0.25))
    mask = torch.ones(1, 2)
    for how, expected in [("same_as_policy", 2 * math.log(2) / 4), ("token_mean", math.log(2))]:
        c = cfg(kl_coef=1.0, kl_estimator="k1", kl_aggregation=how)
        out = policy_loss(logp, logp, torch.zeros(1), mask, mask * 0, c, ref_logprobs=ref)
        assert out.loss.item() == pytest.approx(expected), how


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    lr = math.log(2)  # log(p / p_ref)
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(lr)
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * lr**2)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 + lr - 1)  # e^-lr = 0.5
    with pytest.raises(ValueError, match="reference"):
        mask = torch.ones(1, 1)
        policy_loss(
            logp.view(1, 1), logp.view(1, 1), torch.ones(1), mask, mask * 0, cfg(kl_coef=0.1)
        )


def test_kl_term_is_added_with_its_coefficient():
    logp, ref = torch.log(torch.tensor([[0.5]])), torch.log(torch.tensor([[0.25]]))
    mask = torch.ones(1, 1)
    out = policy_loss(
        logp,
        logp,
        torch.zeros(1),
        mask,
        mask * 0,
        cfg(kl_coef=0.1, kl_estimator="k1"),
        ref_logprobs=ref,
    )
    # policy part 0 (A = 0), kl k1 = ln 2 summed / normalizer 4, times 0.1
    assert out.loss.item() == pytest.approx(0.1 * math.log(2) / 4)


def test_token_logprobs_matches_log_softmax():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 7)
    ids = torch.randint(0, 7, (2, 3))
    expected = torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(token_logprobs(logits, ids), expected, atol=1e-6)


def test_truncated_importance_weight_scales_initial_tokens_only():
    # trainer p_old = 0.5, sampler p = 0.25 -> weight min(2, cap 1.5) = 1.5
    logp = torch.log(torch.tensor([[0.5, 0.5]]))
    old = logp.clone()
    sampler = torch.log(torch.tensor([[0.25, 0.25]]))
    mask = torch.ones(1, 2)
    out = policy_loss(
        logp,
        old,
        torch.tensor([1.0]),
        mask,
        torch.zeros(1, 2),
        cfg(tis_cap=1.5),
        sampler_logprobs=sampler,
    )
    # -A r w summed over 2 tokens / 4 = -(1 * 1 * 1.5 * 2) / 4
    assert out.loss.item() == pytest.approx(-0.75)
    assert out.metrics["tis/capped_fraction"] == 1.0


def _padded_batch(pad_logp, pad_old, pad_ent, pad_ref):
    """Rows: initial with 2 of 4 tokens, refinement with 3 of 4, initial with 4 of 4.
    Padding positions (and the refinement row's old log-probs, never used) hold the given
    values; the real positions are the same in every call."""
    torch.manual_seed(3)
    real_logp = -torch.rand(3, 4) * 2
    resp = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]).bool()
    refine = torch.zeros(3, 4, dtype=torch.bool)
    refine[1] = resp[1]
    initial = resp & ~refine

    def fill(real, pad, where):
        return torch.where(where, real, torch.full_like(real, pad))

    logp = fill(real_logp, pad_logp, resp).requires_grad_()
    old = fill(real_logp + 0.1 * torch.randn(3, 4), pad_old, initial)
    ent = fill(torch.rand(3, 4) * 3, pad_ent, resp).requires_grad_()
    ref = fill(real_logp - 0.2, pad_ref, resp)
    return logp, old, ent, ref, resp.float(), refine.float()


@pytest.mark.parametrize("shaping", ["p_over_p_plus_gamma", "p", "none"])
@pytest.mark.parametrize("term", ["token_mean", "micro_batch_token_mean", "same_as_policy"])
@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "token_sum"])
def test_nan_and_inf_in_padding_change_no_term_and_no_gradient(aggregation, term, shaping):
    """A caller that leaves garbage in padding (an old log-prob of -inf, a NaN entropy)
    gets exactly the loss, metrics and gradients of one that zeroes it."""
    c = cfg(
        aggregation=aggregation, shaping=shaping, clip_low=0.2, clip_high=0.2, tis_cap=2.0,
        entropy_coef=0.01, entropy_aggregation=term, kl_coef=0.1, kl_aggregation=term,
    )  # fmt: skip
    runs = []
    for pads in [(0.0, 0.0, 0.0, 0.0), (math.nan, -math.inf, math.nan, math.inf)]:
        logp, old, ent, ref, resp, refine = _padded_batch(*pads)
        out = policy_loss(
            logp, old, torch.tensor([0.5, 1.5, -1.0]), resp, refine, c,
            entropy=ent, ref_logprobs=ref, sampler_logprobs=old - 0.05,
        )  # fmt: skip
        out.loss.backward()
        runs.append((out, logp.grad, ent.grad))
    (clean, clean_dlogp, clean_dent), (dirty, dirty_dlogp, dirty_dent) = runs
    assert math.isfinite(dirty.loss.item()) and dirty.loss.item() == clean.loss.item()
    assert dirty.metrics == clean.metrics and all(map(math.isfinite, dirty.metrics.values()))
    assert torch.isfinite(dirty_dlogp).all() and torch.equal(dirty_dlogp, clean_dlogp)
    assert torch.isfinite(dirty_dent).all() and torch.equal(dirty_dent, clean_dent)


def test_aggregate_ignores_nan_and_inf_where_masked():
    values = torch.tensor([[1.0, math.nan], [3.0, -math.inf]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert aggregate(values, mask, "token_mean").item() == 2.0  # (1 + 3) / 2
    assert aggregate(values, mask, "seq_mean_token_mean").item() == 2.0
    assert aggregate(values, mask, "token_sum", normalizer=4).item() == 1.0
