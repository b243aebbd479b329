"""Requests each kind of endpoint accepts: OpenAI's reasoning models (max_completion_tokens,
no temperature, reasoning_effort), OpenAI-compatible servers (max_tokens), Azure OpenAI
(api-key header, api-version, deployments), and a server that ignores the limit."""

import logging
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from cgrpo.builtins.critics.api import OpenAICritic
from cgrpo.builtins.critics.endpoint import RequestShape, client_spec, endpoint_kind
from tests.fake_openai import MAX_TOKENS_REFUSED, temperature_refused
from tests.unit.api_critic import request

# the fake's usage: 100 prompt tokens; 20 answer tokens + 64 reasoning tokens
REASONING_COST = (100 * 0.25 + (20 + 64) * 2.0) / 1e6  # at $0.25 / $2.00 per million


def test_an_openai_reasoning_model_at_a_local_url_works_with_no_other_setting(
    make_critic, server, caplog
):
    """A recipe with ``model: gpt-5-mini`` and the defaults against an endpoint answering as
    OpenAI's reasoning models do: the first request learns the shape (two refused requests,
    each change logged once), then every request is sent in it."""
    server.kind, server.reasoning_tokens = "openai-reasoning", 64
    critic = make_critic(
        model="gpt-5-mini", input_price_per_million=0.25, output_price_per_million=2.0
    )
    out = critic.critique([request(response=f"3 + 4 = {i}") for i in range(5)])
    assert [c.fallback for c in out] == [False] * 5
    assert all(c.text == "Step 2 is wrong.\nConclusion: incorrect" for c in out)
    bodies = [r["body"] for r in server.requests]
    assert len(bodies) == 7  # 2 refused + 5 answered
    assert ("max_tokens" in bodies[0], "temperature" in bodies[0]) == (True, True)
    assert ("max_completion_tokens" in bodies[1], "temperature" in bodies[1]) == (True, True)
    for body in bodies[2:]:
        assert body["max_completion_tokens"] == 512 and "max_tokens" not in body
        assert "temperature" not in body
    assert critic.spent_usd == pytest.approx(5 * REASONING_COST)
    assert [c.cost for c in out] == [pytest.approx(REASONING_COST)] * 5
    assert [c.completion_tokens for c in out] == [84] * 5  # reasoning tokens are billed
    t = critic.telemetry()
    assert (t["reasoning_tokens_total"], t["requests_total"], t["failures_total"]) == (320, 7, 0)
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("refused max_tokens" in m for m in said) == 1
    assert sum("only its default temperature" in m for m in said) == 1


def test_openai_and_azure_get_max_completion_tokens_other_servers_max_tokens():
    options = OpenAICritic.Options(model="m", api_key_env=None, reasoning_effort="low")
    for base_url, api_version, param in [
        (None, None, "max_completion_tokens"),
        ("https://api.openai.com/v1", None, "max_completion_tokens"),
        ("https://res.openai.azure.com", "2024-10-21", "max_completion_tokens"),
        ("https://res.openai.azure.com/openai/v1/", None, "max_completion_tokens"),
        ("http://localhost:8000/v1", None, "max_tokens"),  # vLLM, SGLang, Ollama ...
    ]:
        shape = RequestShape(options, endpoint_kind(base_url, api_version))
        assert shape.params(300) == {param: 300, "temperature": 0.0, "reasoning_effort": "low"}


def test_a_fixed_token_limit_param_is_never_switched(make_critic, server):
    """``token_limit_param: max_tokens`` against a reasoning model: one refused request, a
    counted failure whose error says what to set; nothing is sent again blindly."""
    server.kind = "openai-reasoning"
    critic = make_critic(model="gpt-5-mini", token_limit_param="max_tokens")
    [c] = critic.critique([request()])
    assert c.fallback and len(server.requests) == 1
    assert "Use 'max_completion_tokens' instead" in c.error
    assert "token_limit_param: max_completion_tokens" in c.error
    assert critic.telemetry()["failures_total"] == 1


def test_reasoning_effort_is_sent_and_keys_the_cache(make_critic, server):
    make_critic(reasoning_effort="low").critique([request()])
    make_critic(reasoning_effort="high").critique([request()])  # not served from the cache
    make_critic().critique([request()])
    efforts = [r["body"].get("reasoning_effort") for r in server.requests]
    assert efforts == ["low", "high", None]


@pytest.mark.parametrize(
    "sent,error,changed",
    [
        # OpenAI's own bodies carry the parameter's name in "param"
        ("max_tokens", MAX_TOKENS_REFUSED, "max_completion_tokens"),
        # an older Azure api-version names it only in the message
        (
            "max_completion_tokens",
            {"message": "Unrecognized request argument supplied: max_completion_tokens"},
            "max_tokens",
        ),
        # a 400 about something else changes nothing
        ("max_tokens", {"message": "'messages' must be a list", "param": "messages"}, None),
        # nor a bad value of the parameter (vLLM names it in "param" too)
        ("max_tokens", {"message": "max_tokens must be at least 1", "param": "max_tokens"}, None),
    ],
)
def test_a_refusal_switches_the_limit_parameter_once(sent, error, changed):
    options = OpenAICritic.Options(model="m", api_key_env=None, token_limit_param="auto")
    shape = RequestShape(options, "compatible")
    shape.limit_param = sent
    exc = SimpleNamespace(message=error["message"], param=error.get("param"),
                          code=error.get("code"))  # fmt: skip
    said = shape.adapt(exc, shape.params(64))
    assert (said is not None) == (changed is not None)
    assert shape.limit_param == (changed or sent)
    if changed:  # the other one refused too: final, with the reason
        exc = SimpleNamespace(message=f"Unsupported parameter: '{changed}'", param=changed,
                              code="unsupported_parameter")  # fmt: skip
        assert shape.adapt(exc, shape.params(64)) is None
        assert "refused both" in shape.hint(exc)


def test_temperature_refusal_drops_it_once():
    options = OpenAICritic.Options(model="o3", api_key_env=None)
    shape = RequestShape(options, "openai")
    body = temperature_refused(0.0)
    exc = SimpleNamespace(message=body["message"], param=body["param"], code=body["code"])
    sent = shape.params(64)
    assert "only its default temperature" in shape.adapt(exc, sent)
    assert "temperature" not in shape.params(64)
    # a request sent with it before the change: sent again, the change not said again
    assert shape.adapt(exc, sent) == ""


def test_an_endpoint_that_ignores_the_limit_is_named(make_critic, server, caplog):
    """Ollama accepts max_completion_tokens and does not read it: a reply longer than the
    limit says so once (budget_usd could not hold), naming the setting."""
    server.ignored_params = {"max_completion_tokens"}
    critic = make_critic(token_limit_param="max_completion_tokens", max_tokens=8)
    critic.critique([request(response=f"r{i}") for i in range(3)])
    said = [r.getMessage() for r in caplog.records if "ignores that parameter" in r.getMessage()]
    assert len(said) == 1 and "20 completion tokens" in said[0] and "limit of 8" in said[0]


@pytest.mark.parametrize("form", ["resource", "resource/openai/", "deployment"])
def test_azure_deployments_with_api_key_header_and_api_version(make_critic, server, form):
    server.azure_key = "sk-test-secret"
    base = {
        "resource": server.root_url,
        "resource/openai/": server.root_url + "/openai/",
        "deployment": server.root_url + "/openai/deployments/critic-4o",
    }[form]
    critic = make_critic(model="critic-4o", base_url=base, api_version="2024-10-21")
    [c] = critic.critique([request()])
    assert not c.fallback, c.error
    [sent] = server.requests
    assert sent["path"] == "/openai/deployments/critic-4o/chat/completions"
    assert sent["query"] == {"api-version": ["2024-10-21"]}
    assert sent["api-key"] == "sk-test-secret" and sent["auth"] is None
    assert "max_completion_tokens" in sent["body"]


def test_azure_refuses_a_wrong_key_and_it_is_not_retried(make_critic, server):
    server.azure_key = "the-right-key"
    critic = make_critic(model="d", base_url=server.root_url, api_version="2024-10-21")
    [c] = critic.critique([request()])
    assert c.fallback and "authentication failed (401)" in c.error
    assert len(server.requests) == 1


def test_azure_url_forms_are_checked_with_the_recipe():
    def options(**kw):
        return OpenAICritic.Options(model="d", api_key_env=None, **kw)

    with pytest.raises(ValidationError, match="set api_version"):
        options(base_url="https://res.openai.azure.com")
    with pytest.raises(ValidationError, match="base_url is not"):
        options(api_version="2024-10-21")
    with pytest.raises(ValidationError, match="takes no api-version"):
        options(base_url="https://res.openai.azure.com/openai/v1", api_version="2024-10-21")
    # the v1 API: the plain client, the key in api-key as Azure documents it
    name, kwargs = client_spec("https://res.openai.azure.com/openai/v1/", None, "k", 5.0)
    assert name == "AsyncOpenAI" and kwargs["default_headers"] == {"api-key": "k"}
    name, kwargs = client_spec("https://res.cognitiveservices.azure.com/", "2025-04-01", "k", 5)
    assert name == "AsyncAzureOpenAI"
    assert kwargs["azure_endpoint"] == "https://res.cognitiveservices.azure.com"


def test_requests_go_out_together_after_a_first_request_that_failed(make_critic, server):
    """Only the first request goes alone (to learn the request shape): one that fails for
    another reason (here a server error after 0.3 s) does not keep the others one at a
    time (an outage at the start would otherwise cost every request's retries in turn)."""
    server.default = "slow_500"
    critic = make_critic(max_retries=0, concurrency=8, cache=False)
    out = critic.critique([request(response=f"r{i}") for i in range(8)])
    assert all(c.fallback and "server error 500" in c.error for c in out)
    assert server.max_in_flight >= 2  # the 7 after the first were in flight together
