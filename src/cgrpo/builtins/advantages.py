"""Built-in advantage schemes: ``grpo`` (mean-centred, optional std scaling), ``rloo`` and
``reinforce_pp``. One small class each; the math is in :mod:`cgrpo.algo.advantages`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cgrpo.hookspecs import hookimpl


class GRPOAdvantage:
    """GRPO group advantage R - mean(group); std scaling off by default (Dr.GRPO, paper)."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        std_scaling: Literal["none", "group", "batch"] = Field(
            "none",
            description="'none' (paper, Dr.GRPO), 'group' (released code, original GRPO: "
            "divide by the group's unbiased std + eps) or 'batch'",
        )
        eps: float = Field(1e-6, gt=0, description="added to the std before dividing")

    def __init__(self, options: Options, context: Any = None):
        self.options = options

    def compute(self, rewards, mask):
        from cgrpo.algo.advantages import group_advantages

        return group_advantages(
            rewards, mask, std_scaling=self.options.std_scaling, eps=self.options.eps
        )


class RLOOAdvantage:
    """REINFORCE leave-one-out: R_i minus the mean reward of the other group members."""

    def __init__(self, options: Any = None, context: Any = None):
        self.options = options

    def compute(self, rewards, mask):
        from cgrpo.algo.advantages import rloo_advantages

        return rloo_advantages(rewards, mask)


class ReinforcePPAdvantage:
    """REINFORCE++ group baseline: R - mean(group), scaled by the batch std."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        eps: float = Field(1e-6, gt=0, description="added to the batch std before dividing")

    def __init__(self, options: Options, context: Any = None):
        self.options = options

    def compute(self, rewards, mask):
        from cgrpo.algo.advantages import reinforce_pp_advantages

        return reinforce_pp_advantages(rewards, mask, eps=self.options.eps)


@hookimpl
def register_advantage_schemes(register):
    register("grpo", GRPOAdvantage)
    register("rloo", RLOOAdvantage)
    register("reinforce_pp", ReinforcePPAdvantage)
