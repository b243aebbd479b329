"""Built-in critics, registered as the ``builtins.critics`` plugin."""

from cgrpo.builtins.critics.api import OpenAICritic
from cgrpo.builtins.critics.generative import LocalCritic, SelfCritic
from cgrpo.builtins.critics.rule import GroundTruthCritic, IndicativeCritic
from cgrpo.hookspecs import hookimpl


@hookimpl
def register_critics(register):
    register("indicative", IndicativeCritic)
    register("ground_truth", GroundTruthCritic)
    register("self", SelfCritic)
    register("local", LocalCritic)
    register("openai", OpenAICritic)
