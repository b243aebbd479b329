"""Built-in policy (sampling) backends, registered as the ``builtins.policies`` plugin."""

from cgrpo.builtins.policies.hf import HFPolicy
from cgrpo.builtins.policies.vllm import VLLMPolicy
from cgrpo.builtins.policies.vllm_server import VLLMServerPolicy
from cgrpo.hookspecs import hookimpl


@hookimpl
def register_policy_backends(register):
    register("hf", HFPolicy)
    register("vllm", VLLMPolicy)
    register("vllm-server", VLLMServerPolicy)
