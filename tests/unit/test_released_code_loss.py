"""recipes/released-code-qwen3-8b.yaml against the released code's loss, written out here.

Source: zhangxy-2019/critique-GRPO at e8f03a20b495 (files last changed in 55f4661),
verl/verl/critique_grpo/critique_core_algos.py ``compute_token_on_off_policy_loss`` (LUFFY's)
and critique_dp_actor.py ``update_policy``, with the options of
verl/examples/grpo_trainer/run_open_r1_math4k-qwen3-8b-base-critique_simple_gt_online.sh
(off_policy_reshape p_div_p_0.1, loss_remove_token_mean, loss_remove_clip, entropy_coeff
0.001, use_dynamic_bsz with ppo_max_token_len_per_gpu 32768, 8 GPUs, 128 prompts x 8, two
mini-batches). Per micro-batch it computes

    pg  = sum over response tokens of l_t / 6144     (loss_remove_token_mean: / max length)
          l_t = -A exp(logp - old)  on initial tokens (no clip)
          l_t = -A p / (p + 0.1)    on refinement tokens (prefix_mask)
    ent = sum(H * mask) / (sum(mask) + 1e-8)          (agg_loss "token-mean", all tokens)
    loss_mb = (pg - 0.001 ent) * len(data) / ppo_mini_batch_size

where ``data`` is by then the dict of the 8 metrics it logged (not the micro-batch) and
ppo_mini_batch_size is 64 rows per GPU; FSDP then averages the 8 GPUs' gradients. So a
mini-batch's loss is (8 / 64 / 8) x the sum of (pg - 0.001 ent) over all its micro-batches.
"""

import pytest
import torch

from cgrpo.algo.loss import policy_loss
from cgrpo.config import load_recipe
from cgrpo.train.loop import loss_config
from tests.helpers import REPO

MAX_RESPONSE = 6144
SCALE = 8 / 64 / 8  # len(metrics dict) / rows per GPU per mini-batch / mean over 8 GPUs

# Three micro-batches (as the code's dynamic batching might form them on one or several
# GPUs): each row is (response length, is refinement, advantage).
MICRO_BATCHES = [
    [(3, False, 1.2), (2, True, 2.1)],
    [(1, False, -0.4), (4, False, 0.3), (2, False, -0.4)],
    [(4, True, -0.7)],
]
TOKENS = float(sum(n for rows in MICRO_BATCHES for n, _, _ in rows))  # 16
ROWS = float(sum(len(rows) for rows in MICRO_BATCHES))  # 6


def _tensors(rows, seed):
    gen = torch.Generator().manual_seed(seed)
    width = max(n for n, _, _ in rows)
    mask = torch.tensor([[1.0] * n + [0.0] * (width - n) for n, _, _ in rows])
    refine = torch.tensor([[float(r)] * width for _, r, _ in rows]) * mask
    logp = (-torch.rand(len(rows), width, generator=gen, dtype=torch.float64) * 3).float()
    old = logp + 0.1 * torch.randn(len(rows), width, generator=gen)
    ent = torch.rand(len(rows), width, generator=gen) * 2
    adv = torch.tensor([a for _, _, a in rows])
    return logp, old, ent, adv, mask, refine


def _released_code(logp, old, ent, adv, mask, refine):
    """The formula above, for one micro-batch, in float64."""
    logp, old, ent = logp.double(), old.double(), ent.double()
    a = adv.double().unsqueeze(-1)
    p = logp.exp()
    on = -a * torch.exp(logp - old)
    off = -a * p / (p + 0.1)
    pg_losses = off * refine + on * (1 - refine)
    pg = (pg_losses * mask).sum() / MAX_RESPONSE
    ent_mean = (ent * mask).sum() / (mask.sum() + 1e-8)
    return (pg - 0.001 * ent_mean) * SCALE


def _leaves(seed, rows):
    logp, old, ent, adv, mask, refine = _tensors(rows, seed)
    return logp.requires_grad_(), old, ent.requires_grad_(), adv, mask, refine


@pytest.fixture(scope="module")
def released_recipe(tmp_path_factory):
    data = tmp_path_factory.mktemp("data") / "train.jsonl"
    data.write_text('{"problem": "1+1?", "answer": "2"}\n')
    ov = ["model.path=org/model", f"data.task.options.path={data}"]
    recipe, _ = load_recipe(REPO / "recipes" / "released-code-qwen3-8b.yaml", ov)
    return recipe


def test_the_recipe_sets_the_released_codes_terms(released_recipe):
    loss = released_recipe.algorithm.loss
    assert released_recipe.sampling.max_new_tokens == MAX_RESPONSE
    assert loss.normalizer == MAX_RESPONSE / SCALE == 393216  # token sum / 6144, x 1/64
    assert loss.entropy_coef == pytest.approx(0.001 * SCALE)
    assert loss.entropy_aggregation == "micro_batch_token_mean"
    assert loss.micro_batch_token_budget == 32768  # its ppo_max_token_len_per_gpu
    assert (loss.shaping.mode, loss.shaping.gamma, loss.clip.mode) == (
        "p_over_p_plus_gamma",
        0.1,
        "none",
    )


def test_total_loss_and_gradient_equal_the_released_codes(released_recipe):
    cfg = loss_config(released_recipe)
    ours, theirs = [], []
    for side, out in (("cgrpo", ours), ("released", theirs)):
        for index, rows in enumerate(MICRO_BATCHES):
            logp, old, ent, adv, mask, refine = leaves = _leaves(index, rows)
            if side == "released":
                loss = _released_code(*leaves)
            else:  # as the update calls it: the mini-batch totals, and for each row the
                # response tokens of the code's micro-batch that holds it
                tokens = torch.full((len(rows),), float(mask.sum()))
                loss = policy_loss(
                    logp, old, adv, mask, refine, cfg, entropy=ent,
                    num_tokens=TOKENS, num_seqs=ROWS, micro_batch_tokens=tokens,
                ).loss  # fmt: skip
            loss.backward()
            out.append((loss.item(), logp.grad, ent.grad))
    total_ours, total_theirs = sum(x[0] for x in ours), sum(x[0] for x in theirs)
    # the scale between the two is one constant; with the recipe's normalizer and
    # entropy_coef it is 1, so grad-norm clipping acts on the same numbers
    scale = total_ours / total_theirs
    assert scale == pytest.approx(1.0, abs=1e-6)
    for (_, g_logp, g_ent), (_, r_logp, r_ent) in zip(ours, theirs, strict=True):
        assert torch.allclose(g_logp.double(), scale * r_logp.double(), rtol=1e-6, atol=1e-12)
        assert torch.allclose(g_ent.double(), scale * r_ent.double(), rtol=1e-6, atol=1e-12)
    # the entropy term matters here: without it the totals differ
    assert abs(total_theirs) > 0 and ent.grad.abs().max() > 0
