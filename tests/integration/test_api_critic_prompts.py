"""Thinking never reaches a refinement prompt: a training step with the ``openai`` critic
against a local server answering as a reasoning model does (thinking in ``<think>`` in the
content, or in vLLM's separate ``reasoning`` field), reading the refinement prompts the
step actually built. Replies that are only thinking are failures and get the fallback.

The sampler is ``ScriptedPolicy`` (a test double at the sampling boundary only, as in
test_loop.py); the critic, the real ``openai`` SDK over HTTP, the prompt builder and the
step are the real ones."""

import pytest

from tests.fake_openai import FakeOpenAI
from tests.integration.test_loop import ScriptedPolicy, make_trainer

THOUGHT = "HIDDEN THOUGHT zebra: 3 + 4 is 7"
VISIBLE = "Step 2 is wrong.\nConclusion: incorrect"
FALLBACK_START = "The generated solution is incorrect, the ground truth is"


@pytest.mark.parametrize("where", ["think_in_content", "reasoning_field"])
def test_thinking_never_reaches_a_refinement_prompt(tmp_path, tiny_model_dir, torch_one_thread,
                                                    where):  # fmt: skip
    content = f"<think>{THOUGHT}</think>\n{VISIBLE}" if where == "think_in_content" else VISIBLE
    with FakeOpenAI(content=content) as server:
        server.reasoning_text = THOUGHT
        server.reasoning_field = "reasoning" if where == "reasoning_field" else None
        server.script.extend(["think_only"] * 3)  # three replies are thinking only
        trainer, built = make_trainer(
            tmp_path, tiny_model_dir,
            "algorithm.refine=all", "critic.name=openai", "critic.options.model=qwen3",
            f"critic.options.base_url={server.base_url}", "critic.options.api_key_env=null",
            "critic.options.cache=false", "critic.options.concurrency=4",
        )  # fmt: skip
        policy = ScriptedPolicy(built.tokenizer, r"\boxed{-1}", r"\boxed{-1}")
        built.policy = trainer.b.policy = policy
        try:
            metrics = trainer.step(1)
        finally:
            built.critic.close()
    refinement_prompts = [p for p in policy.seen if "Critique:" in p]
    assert len(refinement_prompts) == 14  # 2 prompts x 7 responses, every one refined
    for prompt in refinement_prompts:
        assert "zebra" not in prompt and "<think>" not in prompt and "</think>" not in prompt
    assert sum(VISIBLE in p for p in refinement_prompts) == 11
    assert sum(FALLBACK_START in p for p in refinement_prompts) == 3
    assert metrics["critique/failed"] == 3 and metrics["critique/thinking_only_total"] == 3
    seen = "think_stripped_total" if where == "think_in_content" else "separate_reasoning_total"
    assert metrics[f"critique/{seen}"] == metrics["critique/requests_total"] == 14
