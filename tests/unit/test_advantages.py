"""Advantage schemes against hand-computed numbers (ALGORITHM.md section 2.7)."""

import pytest
import torch

from cgrpo.algo.advantages import group_advantages, reinforce_pp_advantages, rloo_advantages

SEVEN_WRONG_ONE_RIGHT = torch.tensor([[0.0] * 7 + [1.0]])


def test_worked_example_without_std():
    # mean = 1/8 = 0.125 -> refinement 1 - 0.125 = +0.875, initial 0 - 0.125 = -0.125
    adv = group_advantages(SEVEN_WRONG_ONE_RIGHT)
    assert adv[0, 7].item() == pytest.approx(0.875)
    assert adv[0, :7].tolist() == pytest.approx([-0.125] * 7)


def test_worked_example_with_group_std():
    # unbiased std = sqrt(8 * 0.125 * 0.875 / 7) = sqrt(0.125) = 0.35355
    # +0.875 / 0.35355 = 2.4749 ; -0.125 / 0.35355 = -0.35355
    adv = group_advantages(SEVEN_WRONG_ONE_RIGHT, std_scaling="group")
    assert adv[0, 7].item() == pytest.approx(2.475, abs=1e-3)
    assert adv[0, 0].item() == pytest.approx(-0.354, abs=1e-3)


@pytest.mark.parametrize("scaling", ["none", "group", "batch"])
def test_all_wrong_gives_zero(scaling):
    rewards = torch.zeros(3, 8)
    assert torch.equal(group_advantages(rewards, std_scaling=scaling), torch.zeros(3, 8))
    assert torch.equal(rloo_advantages(rewards), torch.zeros(3, 8))
    assert torch.equal(reinforce_pp_advantages(rewards), torch.zeros(3, 8))


def test_masked_members_are_zero_and_excluded_from_the_mean():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 5.0]])  # the 5.0 is padding, not a member
    mask = torch.tensor([[True, True, True, False]])
    adv = group_advantages(rewards, mask)
    # mean over members = 1/3
    assert adv[0].tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0.0])


def test_rloo_is_leave_one_out():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    # A_0 = 1 - mean(0, 0, 1) = 1 - 1/3 = 2/3 ; A_1 = 0 - mean(1, 0, 1) = -2/3
    assert rloo_advantages(rewards)[0].tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])


def test_reinforce_pp_scales_by_batch_std_and_keeps_uniform_groups_at_zero():
    rewards = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # centred: [[0.5, -0.5], [0, 0]] ; std over 4 values (unbiased) = sqrt(0.5/3)
    std = (0.5 / 3) ** 0.5
    adv = reinforce_pp_advantages(rewards)
    assert adv[0].tolist() == pytest.approx([0.5 / std, -0.5 / std], rel=1e-4)
    assert adv[1].tolist() == [0.0, 0.0]


def test_registered_scheme_uses_its_options():
    from cgrpo.plugins import get_registries

    scheme = get_registries()["advantage"].build("grpo", {"std_scaling": "group"}, None)
    adv = scheme.compute(SEVEN_WRONG_ONE_RIGHT, torch.ones(1, 8, dtype=torch.bool))
    assert adv[0, 7].item() == pytest.approx(2.475, abs=1e-3)


@pytest.mark.parametrize("value", [0.7, 0.1, 1 / 3, 0.123456789])
def test_equal_continuous_rewards_give_exactly_zero_under_every_scheme(value):
    """A group whose members all have the same (continuous) reward has no signal: exactly
    zero advantage, also after std scaling (float32 means were an ulp off, which
    std_scaling=group turned into +0.056)."""
    rewards = torch.tensor([[value] * 7, [0.0] * 6 + [1.0]])
    mask = torch.ones_like(rewards, dtype=torch.bool)
    for scaling in ("none", "group", "batch"):
        adv = group_advantages(rewards, mask, std_scaling=scaling)
        assert torch.equal(adv[0], torch.zeros(7)), scaling
        assert adv[1, -1] > 0
    assert torch.equal(rloo_advantages(rewards, mask)[0], torch.zeros(7))
    assert torch.equal(reinforce_pp_advantages(rewards, mask)[0], torch.zeros(7))
    constant = torch.full((1, 7), value)  # a whole batch of equal rewards
    for scaling in ("none", "group", "batch"):
        assert torch.equal(group_advantages(constant, std_scaling=scaling), torch.zeros(1, 7))
    assert torch.equal(reinforce_pp_advantages(constant), torch.zeros(1, 7))


REWARDS_1E4_APART = [0.5, 0.5001, 0.5002, 0.5003, 0.5004]


# float64 rounding of the rewards' mean (~1e-16) divided by their std (1.6e-4): ~7e-13
FLOAT64 = 1e-11


def _expected_group_std_advantages(values, eps=1e-6):
    """Python floats (float64): mean 0.5002, unbiased std sqrt(1e-7 / 4) = 1.58114e-4."""
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return [(v - mean) / (std + eps) for v in values]


def test_rewards_1e4_apart_give_float64_exact_std_scaled_advantages():
    """The top member: 2e-4 / (1.58114e-4 + 1e-6) = 1.256961; the rewards held in float32
    (an error of up to ~3e-8 each, 1e-4 of their spread) gave 1.25704."""
    expected = _expected_group_std_advantages(REWARDS_1E4_APART)
    assert expected[-1] == pytest.approx(1.256961, abs=1e-6)
    rewards = torch.tensor([REWARDS_1E4_APART], dtype=torch.float64)
    adv = group_advantages(rewards, std_scaling="group")
    assert adv.dtype == torch.float64
    assert adv[0].tolist() == pytest.approx(expected, abs=FLOAT64)
    through_float32 = group_advantages(rewards.float(), std_scaling="group")
    assert abs(through_float32[0, -1].item() - expected[-1]) > 1e-5  # why the loop uses float64
    for scheme in (rloo_advantages, reinforce_pp_advantages):
        assert scheme(rewards).dtype == torch.float64


def test_rewards_stay_float64_from_the_verifier_to_the_loss_batch():
    """The loop's step 7 (Trainer.assign_advantages, run on a stand-in trainer that holds
    only the advantage scheme) and collate keep float64: the rows' advantages and the
    Batch the loss receives are exact."""
    from types import SimpleNamespace

    from cgrpo.algo.mixing import TrainRow, collate
    from cgrpo.builtins.advantages import GRPOAdvantage
    from cgrpo.train.loop import Trainer

    scheme = GRPOAdvantage(GRPOAdvantage.Options(std_scaling="group"))
    rows = [TrainRow(0, [1], [2, 3], [0.0, 0.0], False, r) for r in REWARDS_1E4_APART]
    Trainer.assign_advantages(SimpleNamespace(b=SimpleNamespace(advantage=scheme)), rows)
    expected = _expected_group_std_advantages(REWARDS_1E4_APART)
    assert [r.advantage for r in rows] == pytest.approx(expected, abs=FLOAT64)
    batch = collate(rows, pad_id=0)
    assert batch.advantages.dtype == batch.rewards.dtype == torch.float64
    assert batch.advantages.tolist() == [r.advantage for r in rows]
    assert batch.rewards.tolist() == REWARDS_1E4_APART
