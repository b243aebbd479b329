"""Group advantages: one scalar per sequence, broadcast over its tokens later.

All functions take ``rewards`` (P, N) and a boolean ``mask`` (P, N) that is True where a
group member exists, and return (P, N) float advantages, zero where ``mask`` is False.
A group whose members all have the same reward gets exactly zero advantages under every
scheme here, so it contributes no policy gradient. "Exactly": rewards are centred in
float64 and equal-reward groups are zeroed explicitly, because a mean that is one ulp off
(seven rewards of 0.7 in float32) divided by a zero std + eps would become a full-size
advantage. Results are float64, whatever the rewards' dtype: rewards 1e-4 apart (0.5 ..
0.5004) put through float32 give std-scaled advantages off by ~1e-4; the loss casts them
to its own dtype at the last moment.
"""

from __future__ import annotations

from typing import Literal

import torch

StdScaling = Literal["none", "group", "batch"]


def _masked_group_mean(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(rewards.dtype)
    count = m.sum(dim=1, keepdim=True).clamp(min=1)
    return (rewards * m).sum(dim=1, keepdim=True) / count


def _masked_group_std(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased (N-1) standard deviation of each group's present members; 0 for n < 2."""
    m = mask.to(rewards.dtype)
    n = m.sum(dim=1, keepdim=True)
    mean = _masked_group_mean(rewards, mask)
    var = (((rewards - mean) * m) ** 2).sum(dim=1, keepdim=True) / (n - 1).clamp(min=1)
    return var.sqrt()


def _centred(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``R - group mean`` in float64, exactly 0 in groups whose present rewards are equal."""
    rewards = rewards.to(torch.float64)
    present_max = torch.where(mask, rewards, -torch.inf).amax(dim=1, keepdim=True)
    present_min = torch.where(mask, rewards, torch.inf).amin(dim=1, keepdim=True)
    centred = rewards - _masked_group_mean(rewards, mask)
    return torch.where(present_max == present_min, torch.zeros_like(centred), centred)


def group_advantages(
    rewards: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    std_scaling: StdScaling = "none",
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO advantages: ``A_i = R_i - mean(R over the group)``.

    ``std_scaling="none"`` is the paper's choice (Dr.GRPO: no division); ``"group"`` divides
    by the group's unbiased std + ``eps`` (the released code, original GRPO); ``"batch"``
    divides by the std of all present rewards in the batch + ``eps``.

    Worked example (ALGORITHM.md section 2.7): rewards [0]*7 + [1], mean 0.125:
    none -> refinement +0.875, initial -0.125; group -> +2.475 and -0.354.
    """
    if mask is None:
        mask = torch.ones_like(rewards, dtype=torch.bool)
    adv = _centred(rewards, mask)
    rewards = rewards.to(torch.float64)
    if std_scaling == "group":
        adv = adv / (_masked_group_std(rewards, mask) + eps)
    elif std_scaling == "batch":
        present = rewards[mask]
        std = present.std(unbiased=True) if present.numel() > 1 else present.new_zeros(())
        adv = adv / (std + eps)
    elif std_scaling != "none":
        raise ValueError(f"std_scaling must be 'none', 'group' or 'batch', got {std_scaling!r}")
    return adv * mask


def rloo_advantages(rewards: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """REINFORCE leave-one-out: ``A_i = R_i - mean_{j != i} R_j = n/(n-1) (R_i - mean)``.

    Groups with a single present member get 0 (no baseline can be formed without bias).
    """
    if mask is None:
        mask = torch.ones_like(rewards, dtype=torch.bool)
    n = mask.sum(dim=1, keepdim=True).to(torch.float64)
    scale = torch.where(n > 1, n / (n - 1).clamp(min=1), torch.zeros_like(n))
    return _centred(rewards, mask) * scale * mask


def reinforce_pp_advantages(
    rewards: torch.Tensor, mask: torch.Tensor | None = None, *, eps: float = 1e-6
) -> torch.Tensor:
    """REINFORCE++ with a group baseline: subtract the group mean, then scale by the std
    of the centred values of all present members of the batch.

    The centred values already have batch mean 0 when every group is complete, so they are
    not re-centred: a group whose members all have the same reward keeps advantage 0 even
    when other groups are incomplete.
    """
    if mask is None:
        mask = torch.ones_like(rewards, dtype=torch.bool)
    centred = _centred(rewards, mask) * mask
    present = centred[mask]
    if present.numel() < 2:
        return centred
    return centred / (present.std(unbiased=True) + eps) * mask
