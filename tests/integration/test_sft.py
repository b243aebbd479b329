"""The SFT warm-up uses the recipe's optimizer settings (it ignored optim.grad_clip,
weight_decay and betas before, with a hard-coded clip of 1.0 and AdamW's defaults)."""

import pytest
import torch

from cgrpo.recipe.schema import OptimConfig, PromptConfig, RefinementConfig, SFTConfig
from cgrpo.train.prompts import PromptBuilder
from cgrpo.train.sft import sft_warmup
from cgrpo.types import Problem


def warm_up(tiny_model_dir, tok, optim):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    before = [p.detach().clone() for p in model.parameters()]
    problems = [
        Problem(str(i), f"What is {i} + 1?", str(i + 1), f"{i} + 1 = {i + 1}") for i in range(8)
    ]
    prompts = PromptBuilder(tok, PromptConfig(), RefinementConfig(), 128, 32)
    history = sft_warmup(
        model, tok, problems, prompts, SFTConfig(steps=2, batch_size=4, lr=1e-3), 0, optim=optim
    )
    change = sum(
        (p.detach() - b).abs().sum().item() for p, b in zip(model.parameters(), before, strict=True)
    )
    return change, history


@pytest.mark.parametrize(
    "setting",
    [
        {"grad_clip": 1e-6},  # gradients below AdamW's eps: the steps shrink
        {"weight_decay": 100.0},  # decoupled decay: every weight x (1 - lr x 100)
        {"betas": (0.5, 0.9)},
    ],
)
def test_sft_honours_the_optimizer_settings(tiny_model_dir, tiny, setting):
    _, tok = tiny
    base, history = warm_up(tiny_model_dir, tok, OptimConfig(grad_clip=None, weight_decay=0.0))
    changed, _ = warm_up(
        tiny_model_dir, tok, OptimConfig(**{"grad_clip": None, "weight_decay": 0.0, **setting})
    )
    assert abs(changed - base) / base > 1e-3, (setting, base, changed)
    assert history[0]["sft/grad_norm"] > 0


def test_sft_with_its_own_optimizer_and_schedule(tiny_model_dir, tiny):
    """sft.optim: the warm-up's own lr and schedule over its steps (linear decay here)."""
    from transformers import AutoModelForCausalLM

    _, tok = tiny
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    problems = [
        Problem(str(i), f"What is {i} + 1?", str(i + 1), f"{i} + 1 = {i + 1}") for i in range(8)
    ]
    prompts = PromptBuilder(tok, PromptConfig(), RefinementConfig(), 128, 32)
    cfg = SFTConfig(steps=4, batch_size=4, optim=OptimConfig(lr=2e-3, schedule="linear"))
    history = sft_warmup(model, tok, problems, prompts, cfg, 0, optim=OptimConfig(lr=1.0))
    assert [h["sft/lr"] for h in history] == pytest.approx([2e-3, 1.5e-3, 1e-3, 0.5e-3])


def test_sft_lr_beside_sft_optim_is_a_recipe_error(tmp_path):
    from cgrpo.errors import RecipeError
    from cgrpo.recipe import load_recipe
    from tests.unit.test_recipe import GOOD, write

    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, GOOD + "sft: {steps: 5, lr: 0.001, optim: {lr: 0.002}}\n"))
    assert [p.path for p in err.value.problems] == ["sft.lr"]
