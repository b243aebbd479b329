"""Prompt building, and the refinement prompt's context budget (ALGORITHM.md 7.11)."""

import pytest

from cgrpo.config.schema import PromptConfig, RefinementConfig
from cgrpo.model.prompts import PromptBuilder
from cgrpo.types import Problem


@pytest.fixture
def builder(tiny):
    _, tok = tiny
    return PromptBuilder(
        tok,
        PromptConfig(system="Be brief."),
        RefinementConfig(max_critique_tokens=32),
        max_length=200,
        max_new_tokens=40,
    )


def test_prompt_uses_chat_template_system_and_suffix(builder, tiny):
    _, tok = tiny
    text = tok.decode(builder.prompt_ids(Problem("1", "What is 2 + 3?", "5")))
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert "What is 2 + 3? Please reason step by step" in text
    assert text.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("response_words", [0, 1, 100, 2000])
def test_refinement_prompt_never_exceeds_the_budget(builder, tiny, response_words):
    _, tok = tiny
    response = " ".join(f"step{i} = {i * 7}" for i in range(response_words)) + " FINAL 42"
    critique = "The generated solution is incorrect, " * 50
    ids = builder.refinement_ids(Problem("1", "What is 6 * 7?", "42"), response, critique)
    assert len(ids) + builder.max_new_tokens <= builder.max_length
    text = tok.decode(ids)
    assert "Critique:" in text and "What is 6 * 7?" in text
    if response_words <= 1:
        assert response in text  # short responses are kept whole
    else:
        assert "FINAL 42" in text and "step0 =" not in text  # the end is kept


def test_impossible_budget_is_a_clear_error(tiny):
    _, tok = tiny
    b = PromptBuilder(tok, PromptConfig(), RefinementConfig(), max_length=40, max_new_tokens=20)
    with pytest.raises(ValueError, match="max_critique_tokens"):
        b.refinement_ids(Problem("1", "What is 6 * 7?", "42"), "x", "bad")


THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}[no-think]{% endif %}"
    "{% endif %}"
)


def test_chat_template_kwargs_reach_the_template(tiny):
    """Like Qwen3's `enable_thinking`: the template reads the variable the recipe sets."""
    import copy

    _, tok = tiny
    tok = copy.deepcopy(tok)
    tok.chat_template = THINKING_TEMPLATE
    problem = Problem("1", "What is 2 + 3?", "5")

    def render(**kwargs):
        cfg = PromptConfig(chat_template_kwargs=kwargs)
        return tok.decode(PromptBuilder(tok, cfg, RefinementConfig(), 200, 40).prompt_ids(problem))

    assert render(enable_thinking=False).endswith("<|im_start|>assistant\n[no-think]")
    assert render().endswith("<|im_start|>assistant\n")


def test_chat_template_kwargs_without_a_chat_template_are_refused(tiny):
    from cgrpo.errors import DataError

    _, tok = tiny
    cfg = PromptConfig(chat_template=False, chat_template_kwargs={"enable_thinking": False})
    with pytest.raises(DataError, match="would be ignored"):
        PromptBuilder(tok, cfg, RefinementConfig(), 200, 40)


def test_prompts_given_as_chat_messages(tiny, tmp_path):
    """messages_field: a dataset whose prompt is a list of chat messages, used as it is
    (its own system message wins over data.prompt.system)."""
    import json

    from cgrpo.builtins.tasks.files import FileOptions, JSONLTask
    from cgrpo.errors import DataError

    _, tok = tiny
    rows = [
        {"messages": [{"role": "system", "content": "Terse."}, {"role": "user", "content": "2+2?"}],
         "answer": "4"},
        {"messages": [{"role": "user", "content": "3+3?"}], "answer": "6"},
    ]  # fmt: skip
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    problems = JSONLTask(FileOptions(path=str(path), messages_field="messages")).load()
    assert [p.question for p in problems] == ["2+2?", "3+3?"]  # the last user message
    builder = PromptBuilder(tok, PromptConfig(system="Be brief."), RefinementConfig(), 200, 40)
    first, second = (tok.decode(builder.prompt_ids(p)) for p in problems)
    expected = "<|im_start|>system\nTerse.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
    assert first == expected + "<|im_start|>assistant\n"
    assert second.startswith("<|im_start|>system\nBe brief.<|im_end|>") and "3+3?" in second
    plain = PromptBuilder(tok, PromptConfig(chat_template=False), RefinementConfig(), 200, 40)
    with pytest.raises(DataError, match=r"chat\.jsonl:1: a prompt given as chat messages"):
        plain.prompt_ids(problems[0])
    path.write_text('{"messages": "2+2?", "answer": "4"}\n')
    with pytest.raises(DataError, match="must be a non-empty list of chat messages"):
        JSONLTask(FileOptions(path=str(path), messages_field="messages")).load()
