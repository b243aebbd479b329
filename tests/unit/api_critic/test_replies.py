"""Replies that are not a critique are counted failures with the fallback used (never
cached, never training input), and thinking never becomes critique text."""

import pytest

from cgrpo.builtins.critics.replies import UNUSABLE, strip_thinking
from tests.unit.api_critic import request

CRITIQUE = "Step 2 is wrong.\nConclusion: incorrect"
FALLBACK = "The generated solution is incorrect, the ground truth is 7."


@pytest.mark.parametrize(
    "content,text,found",
    [
        ("Step 2 is wrong.", "Step 2 is wrong.", False),
        ("<think>3+4=7, so 8 is wrong</think>\n\nStep 2 is wrong.", "Step 2 is wrong.", True),
        # the chat template opened the block in the prompt: only its end is in the content
        ("3+4=7, so 8 is wrong\n</think>\nStep 2 is wrong.", "Step 2 is wrong.", True),
        ("<think>a</think>Step 2<think>b</think> is wrong.", "Step 2 is wrong.", True),
        ("<think>3+4=7, so", "", True),  # cut while thinking
        ("Step 2 is wrong. <think>hm", "Step 2 is wrong.", True),
        ("  \n\t", "", False),
    ],
)
def test_strip_thinking(content, text, found):
    assert strip_thinking(content) == (text, found)


@pytest.mark.parametrize(
    "behaviour,kind",
    [
        ("whitespace", "empty"),
        ("null", "empty"),
        ("length", "truncated"),
        ("refusal", "refusal"),
        ("think_only", "thinking_only"),
    ],
)
def test_unusable_replies_are_counted_failures_with_the_fallback(
    make_critic, server, behaviour, kind
):
    server.script.append(behaviour)
    critic = make_critic(input_price_per_million=1.0, output_price_per_million=2.0)
    [c] = critic.critique([request()])
    assert c.fallback and c.text == FALLBACK
    assert c.error.startswith(UNUSABLE[kind])
    assert len(server.requests) == 1  # not retried: the same prompt gets the same reply
    t = critic.telemetry()
    assert t[f"{kind}_total"] == 1 and t["failures_total"] == 1
    completion = 512 if kind == "truncated" else 20  # a cut reply bills the whole limit
    assert c.cost == pytest.approx((100 * 1.0 + completion * 2.0) / 1e6)  # paid all the same
    assert critic.spent_usd == pytest.approx(c.cost)
    again = critic.critique([request()])[0]  # never cached: asked again
    assert len(server.requests) == 2 and not again.fallback and again.text == CRITIQUE


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_a_separate_reasoning_field_is_never_the_critique(make_critic, server, field):
    server.reasoning_field, server.reasoning_tokens = field, 30
    critic = make_critic()
    [c] = critic.critique([request()])
    assert c.text == CRITIQUE and server.reasoning_text not in c.text
    t = critic.telemetry()
    assert (t["separate_reasoning_total"], t["reasoning_tokens_total"]) == (1, 30)


def test_think_in_the_content_is_stripped_counted_and_not_cached(make_critic, server, tmp_path):
    server.content = f"<think>{server.reasoning_text}</think>\n{CRITIQUE}"
    critic = make_critic()
    [c] = critic.critique([request()])
    assert c.text == CRITIQUE and c.critic_verdict is False
    assert critic.telemetry()["think_stripped_total"] == 1
    cached = make_critic().critique([request()])[0]
    assert cached.cached and cached.text == CRITIQUE


def test_a_reply_with_only_a_separate_reasoning_is_thinking_only(make_critic, server):
    server.reasoning_field = "reasoning_content"
    server.script.append("null")
    [c] = make_critic().critique([request()])
    assert c.fallback and c.error.startswith(UNUSABLE["thinking_only"])


def test_a_cut_reply_is_asked_once_more_with_the_larger_limit(make_critic, server):
    server.script.append("length")
    critic = make_critic(
        truncated_retry_tokens=2048, input_price_per_million=1.0, output_price_per_million=2.0
    )
    [c] = critic.critique([request()])
    assert not c.fallback and c.text == CRITIQUE
    assert [r["body"]["max_tokens"] for r in server.requests] == [512, 2048]
    # both requests paid: 100 + 512 tokens, then 100 + 20
    assert c.cost == pytest.approx((200 * 1.0 + 532 * 2.0) / 1e6)
    t = critic.telemetry()
    assert (t["truncated_retries_total"], t["truncated_total"], t["failures_total"]) == (1, 0, 0)


def test_a_reasoning_model_that_spends_the_limit_thinking_is_cut(make_critic, server):
    """OpenAI's reasoning models answer an empty content with finish_reason "length" when
    the reasoning uses up max_completion_tokens; the 512 tokens are billed."""
    server.kind, server.reasoning_tokens = "openai-reasoning", 600
    critic = make_critic(model="o4-mini", token_limit_param="max_completion_tokens",
                         output_price_per_million=1.0)  # fmt: skip
    [c] = critic.critique([request()])
    assert c.fallback and c.error.startswith(UNUSABLE["truncated"])
    assert (c.completion_tokens, c.cost) == (512, pytest.approx(512 / 1e6))
    assert critic.telemetry()["reasoning_tokens_total"] == 512
