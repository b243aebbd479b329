"""Critics: rule texts, CoT templates and verdicts (the ``openai`` critic against a local
server: tests/unit/api_critic/)."""

import pytest

from cgrpo.builtins.critics.api import OpenAICritic
from cgrpo.builtins.critics.prompts import COT_V1, parse_verdict, resolve_template
from cgrpo.builtins.critics.rule import GroundTruthCritic, IndicativeCritic
from tests.unit.api_critic import request


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
