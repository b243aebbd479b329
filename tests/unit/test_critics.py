"""Critics: rule texts, CoT templates and verdicts, and the ``openai`` critic tested with
the real ``openai`` SDK against a local chat-completions server on 127.0.0.1."""

import time

import pytest

from cgrpo.builtins.critics.api import OpenAICritic
from cgrpo.builtins.critics.prompts import COT_V1, parse_verdict, resolve_template
from cgrpo.builtins.critics.rule import GroundTruthCritic, IndicativeCritic
from cgrpo.errors import CgrpoError
from cgrpo.types import CritiqueRequest, Problem, Verdict
from tests.fake_openai import FakeOpenAI

KEY_ENV = "CGRPO_TEST_API_KEY"
PROBLEM = Problem("p1", "What is 3 + 4?", "7")


def request(response="3 + 4 = 8. \\boxed{8}", correct=False, problem=PROBLEM):
    return CritiqueRequest(problem, response, Verdict(float(correct), correct, None))


def test_rule_critic_texts():
    assert (
        IndicativeCritic().critique([request()])[0].text == "The generated solution is incorrect."
    )
    assert IndicativeCritic().critique([request(correct=True)])[0].text == (
        "The generated solution is correct."
    )
    assert GroundTruthCritic().critique([request()])[0].text == (
        "The generated solution is incorrect, the ground truth is 7."
    )


@pytest.mark.parametrize(
    "text,verdict",
    [
        ("... so step 2 is wrong.\nConclusion: incorrect", False),
        ("Conclusion: Correct", True),
        ("Conclusion: **wrong**", False),
        ("first Conclusion: correct then Conclusion: incorrect", False),
        ("no verdict here", None),
    ],
)
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) is verdict


def test_templates_show_question_answer_response_and_custom_ones_are_versioned():
    msgs = COT_V1.messages(request())
    user = msgs[-1]["content"]
    assert "What is 3 + 4?" in user and "Reference answer: 7" in user and "\\boxed{8}" in user
    a = resolve_template("cot", "Q: {question}\nA: {response}", None)
    b = resolve_template("cot", "Q: {question}\nAnswer: {response}", None)
    assert a.version != b.version and a.version.startswith("custom-")
    with pytest.raises(ValueError, match="template_text"):
        OpenAICritic.Options(model="m", template_text="{question} {nope}")


@pytest.fixture
def server():
    with FakeOpenAI(hang_s=2.0) as srv:
        yield srv


@pytest.fixture
def make_critic(server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-secret")
    made = []

    def make(**options):
        opts = dict(
            model="critic-model",
            base_url=server.base_url,
            api_key_env=KEY_ENV,
            backoff_s=0.01,
            timeout_s=1.0,
            cache_dir=str(tmp_path / "cache"),
        )
        opts.update(options)
        critic = OpenAICritic(OpenAICritic.Options(**opts))
        made.append(critic)
        return critic

    yield make
    for critic in made:
        critic.close()


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


@pytest.mark.parametrize("concurrency", [1, 8, 32])
def test_budget_is_a_hard_cap_at_any_concurrency(make_critic, server, concurrency, caplog):
    """Spend never exceeds budget_usd, however many requests are in flight: each one
    reserves its worst-case cost before it is sent. (Checking spend before each request
    without counting those in flight overspent a $0.0015 cap 6x at concurrency 8.)"""
    critic = make_critic(
        input_price_per_million=10.0,
        output_price_per_million=30.0,
        concurrency=concurrency,
        cache=False,
    )
    worst = critic.worst_case_cost(request(response="answer 0"))
    actual = (100 * 10.0 + 20 * 30.0) / 1e6  # the fake server's usage: 100 + 20 tokens
    assert worst > actual
    critic.options.budget_usd = 3.5 * worst
    results = critic.critique([request(response=f"answer {i}") for i in range(40)])
    assert critic.spent_usd <= critic.options.budget_usd
    paid = [c for c in results if not c.fallback]
    assert len(paid) == len(server.requests) >= 3  # at least 3 worst cases fit
    assert critic.spent_usd == pytest.approx(actual * len(paid))
    refused = [c for c in results if c.fallback]
    assert refused and all(c.error == "budget exhausted" for c in refused)
    assert critic.telemetry()["budget_fallbacks_total"] == len(refused)
    assert critic.reserved_usd == pytest.approx(0.0)
    reached = [r for r in caplog.records if "budget_usd" in r.getMessage()]
    assert len(reached) == 1 and reached[0].levelname == "WARNING"  # said once, in train.log


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


def test_failed_and_budget_fallbacks_are_counted_apart():
    """critique/failed counts what the API critic's failures_total counts (requests that
    gave up); refusals by the budget are critique/budget_fallbacks (they were in one count
    and not the other)."""
    from cgrpo.train.metrics import critique_metrics
    from cgrpo.types import BUDGET_EXHAUSTED, Critique

    crits = [
        Critique("ok", "openai", latency_s=1.5),
        Critique(
            "fb",
            "openai",
            fallback=True,
            error="server error 500 (after 5 attempts)",
            latency_s=2.0,
        ),
        Critique("fb", "openai", fallback=True, error=BUDGET_EXHAUSTED),
        Critique("fb", "openai", fallback=True, error="disagreement"),
        Critique("cached", "openai", cached=True, latency_s=9.0),  # no request was made
    ]
    m = critique_metrics(crits)
    assert m["critique/latency_s_sum"] == 3.5
    assert m["critique/failed"] == 1
    assert m["critique/budget_fallbacks"] == 1
    assert m["critique/fallbacks"] == 3


def test_system_message_replaces_the_templates_without_template_text():
    """critic.options.system alone was ignored before (it worked only with template_text);
    the changed template gets its own version, so cached critiques are not reused."""
    from cgrpo.builtins.critics.prompts import TEMPLATES, resolve_template
    from cgrpo.types import CritiqueRequest, Problem, Verdict

    plain = resolve_template("cot", None, None)
    strict = resolve_template("cot", None, "You are a strict examiner.")
    assert plain is TEMPLATES["cot"]
    assert strict.user == plain.user and strict.version != plain.version
    request = CritiqueRequest(Problem("1", "1+1?", "2"), "3", Verdict(0.0, False))
    assert strict.messages(request)[0] == {
        "role": "system",
        "content": "You are a strict examiner.",
    }
    both = resolve_template("cot", "Grade: {question} {answer} {response}", "S")
    assert (both.system, both.name) == ("S", "custom")


def test_rule_critics_render_exactly_the_configured_template():
    from cgrpo.plugins import get_registries
    from cgrpo.types import CritiqueRequest, Problem, Verdict

    build = get_registries()["critic"].build
    req = CritiqueRequest(Problem("1", "7+5?", "12"), "13", Verdict(0.0, False, "13"))
    ok = CritiqueRequest(Problem("2", "1+1?", "2"), "2", Verdict(1.0, True, "2"))
    # the defaults are the paper's sentences, unchanged
    assert build("ground_truth", {}, None).critique([req])[0].text == (
        "The generated solution is incorrect, the ground truth is 12."
    )
    assert (
        build("indicative", {}, None).critique([ok])[0].text == "The generated solution is correct."
    )
    tiny = build(
        "ground_truth", {"template": "{verdict} {answer}", "correct": "y", "incorrect": "n"}, None
    )
    assert [c.text for c in tiny.critique([req, ok])] == ["n 12", "y 2"]
    full = build("indicative", {"template": "{question} you said {extracted}: {verdict}"}, None)
    assert full.critique([req])[0].text == "7+5? you said 13: incorrect"
    assert tiny.version != build("ground_truth", {}, None).version


def test_a_rule_template_with_an_unknown_field_is_refused():
    import pydantic

    from cgrpo.builtins.critics.rule import RuleOptions

    with pytest.raises(pydantic.ValidationError, match=r"\{verdict\}, \{answer\}"):
        RuleOptions(template="{verdict} {reference}")
