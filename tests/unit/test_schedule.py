"""The learning-rate schedule: linear warm-up, then a linear or cosine decay from the peak
lr to ``optim.min_lr``; min_lr is checked against lr and against a constant schedule."""

import math

import pytest
import torch

from cgrpo.config.schema import OptimConfig
from cgrpo.train.update import make_optimizer


def lrs(cfg: OptimConfig, total: int) -> list[float]:
    opt, scheduler = make_optimizer(torch.nn.Linear(2, 1), cfg, total_updates=total)
    out = []
    for _ in range(total + 1):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return out


def test_cosine_decays_to_min_lr():
    # lr 1.0, floor 0.1, 4 updates: 0.1 + 0.9 * (1 + cos(pi * t / 4)) / 2 for t = 0..4
    got = lrs(OptimConfig(lr=1.0, min_lr=0.1, schedule="cosine"), 4)
    want = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(5)]
    assert got == pytest.approx(want)
    assert got[2] == pytest.approx(0.55) and got[-1] == pytest.approx(0.1)
    assert lrs(OptimConfig(lr=1.0, schedule="cosine"), 4)[-1] == pytest.approx(0.0)


def test_linear_decay_and_warm_up_keep_the_floor():
    # 2 warm-up steps (0.5, 1.0), then 1.0 -> 0.2 linearly over the remaining 2 updates
    got = lrs(OptimConfig(lr=1.0, min_lr=0.2, schedule="linear", warmup_steps=2), 4)
    assert got == pytest.approx([0.5, 1.0, 1.0, 0.6, 0.2])


def test_min_lr_above_lr_or_on_a_constant_schedule_is_an_error():
    from cgrpo.config.validate import validate_recipe
    from cgrpo.errors import RecipeError
    from cgrpo.plugins import get_registries

    with pytest.raises(ValueError, match=r"min_lr 0\.1 is above lr 0\.01"):
        OptimConfig(lr=0.01, min_lr=0.1, schedule="cosine")
    raw = {"model": {"path": "m"}, "data": {"task": "arithmetic"},
           "optim": {"lr": 1e-5, "min_lr": 1e-6}}  # fmt: skip
    with pytest.raises(RecipeError) as err:
        validate_recipe(raw, get_registries())
    assert "optim.min_lr" in err.value.render() and "schedule: cosine" in err.value.render()
