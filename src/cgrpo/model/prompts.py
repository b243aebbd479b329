"""Problem -> prompt token ids, and (question, response, critique) -> refinement prompt.

The refinement prompt must fit the context window: it is built so that
``len(prompt) + max_new_tokens <= max_length`` always holds, by cutting the critique to
``max_critique_tokens`` and then shortening the previous response from the front (its
end, where the final answer is, is kept).
"""

from __future__ import annotations

from typing import Any

from cgrpo.errors import DataError
from cgrpo.types import Problem

ELLIPSIS = "... "


class RefinementTooLong(ValueError):
    """A refinement prompt cannot fit the context even without the previous response (a
    long question under a long refinement template): the refinement is skipped."""


class PromptBuilder:
    """Formats prompts with the recipe's template and the tokenizer's chat template."""

    def __init__(
        self,
        tokenizer: Any,
        prompt_cfg: Any,
        refinement_cfg: Any,
        max_length: int,
        max_new_tokens: int,
    ):
        self.tok = tokenizer
        self.cfg = prompt_cfg
        self.ref = refinement_cfg
        self.max_length = max_length
        self.max_new_tokens = max_new_tokens
        self._cache: dict[str, list[int]] = {}
        self._message_cache: dict[tuple, list[int]] = {}
        self.chat = bool(prompt_cfg.chat_template and getattr(tokenizer, "chat_template", None))
        self.chat_kwargs = dict(getattr(prompt_cfg, "chat_template_kwargs", None) or {})
        if self.chat_kwargs and not self.chat:
            raise DataError(
                "data.prompt.chat_template_kwargs is set but the tokenizer has no chat "
                "template: it would be ignored; remove it (or use a tokenizer with one)"
            )

    def _render(self, messages: list[dict[str, str]]) -> list[int]:
        if self.cfg.system and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": self.cfg.system}, *messages]
        text = self.tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **self.chat_kwargs
        )
        return self.tok.encode(text, add_special_tokens=False)

    def _encode_user(self, user: str) -> list[int]:
        if self.chat:
            return self._render([{"role": "user", "content": user}])
        text = (self.cfg.system + "\n\n" if self.cfg.system else "") + user
        return self.tok.encode(text, add_special_tokens=False)

    def user_text(self, problem: Problem) -> str:
        return self.cfg.template.format(question=problem.question) + self.cfg.suffix

    def prompt_ids(self, problem: Problem) -> list[int]:
        """Token ids of the training prompt of ``problem`` (cached by question: build()
        measures every prompt once, and the loop, warm-up and evaluation reuse them; ids
        of a training and an evaluation task can collide, questions map to prompts)."""
        messages = problem.metadata.get("messages")
        if messages is not None:  # a chat-format row: its messages as they are
            if not self.chat:
                raise DataError(
                    f"{problem.metadata.get('source', problem.id)}: a prompt given as chat "
                    "messages (messages_field) needs the tokenizer's chat template; set "
                    "data.prompt.chat_template: true, or map question_field instead"
                )
            key = tuple((m["role"], m["content"]) for m in messages)
            if key not in self._message_cache:
                self._message_cache[key] = self._render(list(messages))
            return self._message_cache[key]
        ids = self._cache.get(problem.question)
        if ids is None:
            ids = self._cache[problem.question] = self._encode_user(self.user_text(problem))
        return ids

    def refinement_ids(self, problem: Problem, response: str, critique: str) -> list[int]:
        """Token ids of the refinement prompt, guaranteed to leave room for the refinement."""
        critique_ids = self.tok.encode(critique, add_special_tokens=False)
        if len(critique_ids) > self.ref.max_critique_tokens:
            critique = self.tok.decode(critique_ids[: self.ref.max_critique_tokens]) + " ..."
        question = self.cfg.template.format(question=problem.question)

        def build(resp: str) -> list[int]:
            return self._encode_user(
                self.ref.template.format(question=question, response=resp, critique=critique)
            )

        return self._fit(problem, build, response, "lower refinement.max_critique_tokens")

    def critique_ids(self, problem: Problem, response: str, template: str) -> list[int]:
        """Token ids of the prompt a critique is learnt under (``critique_ft``): ``template``
        with {question} and {response}, the response shortened from the front to leave
        ``max_new_tokens`` of room, as in a refinement prompt."""
        question = self.cfg.template.format(question=problem.question)

        def build(resp: str) -> list[int]:
            return self._encode_user(template.format(question=question, response=resp))

        return self._fit(problem, build, response, "shorten the critique template")

    def _fit(self, problem: Problem, build, response: str, fix: str) -> list[int]:
        """``build(response)``, the response shortened from the front (its end, where the
        answer is, is kept) until prompt + max_new_tokens fits model.max_length."""
        budget = self.max_length - self.max_new_tokens
        base = len(build(""))
        if base > budget:
            raise RefinementTooLong(
                f"problem {problem.id}: the prompt without the previous response is {base} "
                f"tokens, over the budget {budget} (model.max_length - "
                f"sampling.max_new_tokens); {fix}"
            )
        resp_ids = self.tok.encode(response, add_special_tokens=False)
        ids = build(response)
        room = budget - base
        while len(ids) > budget:  # keep the end of the response; shrink until it fits
            if room <= 0:
                return build("")
            ids = build(ELLIPSIS + self.tok.decode(resp_ids[-room:]))
            room -= max(1, len(ids) - budget)
        return ids
