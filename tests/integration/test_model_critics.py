"""``self`` and ``local`` critics on tiny local models (real generation, no mocks)."""

import pytest

from cgrpo.builtins.critics.generative import LocalCritic, SelfCritic
from cgrpo.builtins.policies.hf import HFPolicy
from cgrpo.interfaces import BuildContext
from cgrpo.plugins import get_registries
from cgrpo.types import CritiqueRequest, Problem, Verdict

REQS = [
    CritiqueRequest(
        Problem(str(i), f"What is {i} + 1?", str(i + 1)), f"\\boxed{{{i}}}", Verdict(0.0, False)
    )
    for i in range(5)
]


class CountingPolicy(HFPolicy):
    """The real hf backend, counting generate() calls."""

    calls = 0

    def generate(self, prompts, params, seeds=None):
        type(self).calls += 1
        return super().generate(prompts, params, seeds)


def test_self_critic_batches_all_critiques_into_one_generation_pass(tiny):
    model, tok = tiny
    policy = CountingPolicy(HFPolicy.Options(), BuildContext(model=model, tokenizer=tok))
    critic = get_registries()["critic"].build(
        "self", {"max_tokens": 12}, BuildContext(model=model, tokenizer=tok, policy=policy)
    )
    assert isinstance(critic, SelfCritic)
    before = CountingPolicy.calls
    out = critic.critique(REQS)
    assert CountingPolicy.calls == before + 1
    assert len(out) == 5 and all(c.critic == "self" and not c.fallback for c in out)
    assert all(c.completion_tokens <= 13 for c in out)


def test_self_critic_needs_the_policy():
    with pytest.raises(ValueError, match="policy backend"):
        SelfCritic(SelfCritic.Options(), BuildContext())


def test_local_critic_loads_a_frozen_separate_model(tiny_model_dir, tiny):
    policy_model, _ = tiny
    critic = get_registries()["critic"].build(
        "local", {"path": str(tiny_model_dir), "max_tokens": 8, "device": "cpu"}, None
    )
    assert isinstance(critic, LocalCritic)
    assert critic.model is not policy_model
    assert not any(p.requires_grad for p in critic.model.parameters())
    assert not critic.model.training
    out = critic.critique(REQS[:2])
    assert [c.critic for c in out] == ["local", "local"]
