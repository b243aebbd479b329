"""The ``openai`` critic's requests: tokens, cost and verdicts, retries, timeouts, the
cache, bounded concurrency, the rate limit and disagreements."""

import time

import pytest

from cgrpo.builtins.critics.api import OpenAICritic
from cgrpo.errors import CgrpoError
from tests.unit.api_critic import request


def test_ok_critique_with_tokens_cost_and_verdict(make_critic, server):
    critic = make_critic(input_price_per_million=1.0, output_price_per_million=2.0)
    [c] = critic.critique([request()])
    assert c.text == "Step 2 is wrong.\nConclusion: incorrect"
    assert not c.fallback and c.critic_verdict is False and c.error is None
    assert (c.prompt_tokens, c.completion_tokens) == (100, 20)
    assert c.cost == pytest.approx((100 * 1.0 + 20 * 2.0) / 1e6)
    body = server.requests[0]["body"]
    assert body["model"] == "critic-model" and body["temperature"] == 0.0
    assert "Reference answer: 7" in body["messages"][-1]["content"]
    assert server.requests[0]["auth"] == "Bearer sk-test-secret"


@pytest.mark.parametrize("failure", ["429", "500", "malformed", "empty"])
def test_transient_failures_are_retried(make_critic, server, failure):
    server.script.extend([failure, failure])
    critic = make_critic()
    [c] = critic.critique([request()])
    assert not c.fallback
    assert len(server.requests) == 3
    assert critic.telemetry()["retries_total"] == 2


@pytest.mark.parametrize("failure", ["400", "401"])
def test_client_errors_are_not_retried_and_fall_back(make_critic, server, failure):
    server.script.append(failure)
    critic = make_critic()
    [c] = critic.critique([request()])
    assert c.fallback and c.text == "The generated solution is incorrect, the ground truth is 7."
    assert len(server.requests) == 1
    assert failure in c.error or "authentication" in c.error
    assert "sk-test-secret" not in c.error


def test_a_hanging_server_times_out_retries_then_falls_back(make_critic, server):
    server.script.extend(["hang", "hang"])
    critic = make_critic(timeout_s=0.3, max_retries=1)
    started = time.monotonic()
    [c] = critic.critique([request()])
    assert time.monotonic() - started < 3
    assert c.fallback and "timed out" in c.error
    assert critic.telemetry()["failures_total"] == 1


def test_cache_serves_repeats_without_requests(make_critic, server, tmp_path):
    first = make_critic(input_price_per_million=1.0)
    a = first.critique([request()])[0]
    second = make_critic(input_price_per_million=1.0)  # a new run, same cache directory
    b = second.critique([request()])[0]
    assert len(server.requests) == 1
    assert b.cached and b.cost == 0.0 and b.text == a.text
    # a different response is a different key
    second.critique([request(response="3 + 4 = 9")])
    assert len(server.requests) == 2
    # another model is a different key too
    make_critic(model="other-model").critique([request()])
    assert len(server.requests) == 3


def test_budget_without_prices_is_an_options_error():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="input_price_per_million"):
        OpenAICritic.Options(budget_usd=1.0)


def test_concurrency_is_bounded(make_critic, server):
    server.default = "slow"
    critic = make_critic(concurrency=2, cache=False)
    started = time.monotonic()
    out = critic.critique([request(response=f"r{i}") for i in range(6)])
    assert len(out) == 6 and not any(c.fallback for c in out)
    assert server.max_in_flight == 2
    assert time.monotonic() - started >= 0.85  # 3 waves of 0.3 s


def test_disagreement_keep_retry_fallback(make_critic, server):
    server.content = "Looks fine.\nConclusion: correct"  # but the verifier says incorrect
    kept = make_critic(cache=False).critique([request()])[0]
    assert kept.error == "disagreement" and not kept.fallback and kept.critic_verdict is True
    n = len(server.requests)
    make_critic(cache=False, on_disagreement="retry").critique([request()])
    assert len(server.requests) == n + 2
    fb = make_critic(cache=False, on_disagreement="fallback").critique([request()])[0]
    assert fb.fallback and "ground truth is 7" in fb.text


def test_missing_key_variable_is_named(monkeypatch, tmp_path):
    monkeypatch.delenv("CGRPO_NOT_SET", raising=False)
    with pytest.raises(CgrpoError, match="CGRPO_NOT_SET"):
        OpenAICritic(
            OpenAICritic.Options(model="m", api_key_env="CGRPO_NOT_SET", cache_dir=str(tmp_path))
        )


def test_requests_per_minute_limit_waits(make_critic, server, monkeypatch):
    critic = make_critic(requests_per_minute=2, cache=False)
    sleeps = []
    import asyncio

    real_sleep = asyncio.sleep

    async def fake_sleep(seconds):  # record the limiter's wait instead of waiting a minute
        sleeps.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr("cgrpo.builtins.critics.api.asyncio.sleep", fake_sleep)
    critic.critique([request(response=f"r{i}") for i in range(3)])
    assert len(server.requests) == 3
    assert any(s > 50 for s in sleeps)  # the third request waited for the window
