"""Built-in verifiers, registered as the ``builtins.verifiers`` plugin."""

from cgrpo.builtins.verifiers.choice import ChoiceVerifier
from cgrpo.builtins.verifiers.composed import PythonVerifier, WeightedVerifier
from cgrpo.builtins.verifiers.exact import ExactVerifier
from cgrpo.builtins.verifiers.math import MathVerifier
from cgrpo.hookspecs import hookimpl


@hookimpl
def register_verifiers(register):
    register("math", MathVerifier)
    register("exact", ExactVerifier)
    register("choice", ChoiceVerifier)
    register("python", PythonVerifier)
    register("weighted", WeightedVerifier)
