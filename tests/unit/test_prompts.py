"""Prompt building, and the refinement prompt's context budget (ALGORITHM.md 7.11)."""

import pytest

from cgrpo.recipe.schema import PromptConfig, RefinementConfig
from cgrpo.train.prompts import PromptBuilder
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
