"""Built-in critics, registered as the ``builtins.critics`` plugin."""

from cgrpo.builtins.critics.rule import GroundTruthCritic, IndicativeCritic
from cgrpo.hookspecs import hookimpl


@hookimpl
def register_critics(register):
    register("indicative", IndicativeCritic)
    register("ground_truth", GroundTruthCritic)
