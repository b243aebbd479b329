"""``openai``: critiques from any OpenAI-compatible endpoint (OpenAI, Azure OpenAI, vLLM,
SGLang, Ollama ...), cheap, bounded and never fatal.

- the official SDK on one event loop in a background thread, so HTTP connections are
  reused across steps; bounded concurrency and an optional requests-per-minute limit;
  per-request timeout; retries with exponential backoff and jitter (``transport``);
- requests in the shape each endpoint accepts: the token limit as ``max_tokens`` or
  ``max_completion_tokens``, no temperature for models that take only their default,
  ``reasoning_effort`` when set (``endpoint``);
- replies that are not a critique (empty, cut at the token limit, a refusal, only
  thinking) are failures, counted by kind; thinking never becomes critique text
  (``replies``);
- a content-addressed on-disk cache keyed by (question, response, reference answer,
  model, temperature, max tokens, reasoning effort, template version);
- token and cost accounting from the recipe's prices (reasoning tokens counted apart),
  and a hard budget (``budget``): once spent, every further critique is the fallback;
- on final failure the ground-truth critique is used, marked ``fallback`` and counted.

The API key is read from the environment variable the recipe names (``api_key_env``);
it is never written to logs, samples, checkpoints or the resolved recipe.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from cgrpo.builtins.critics.api_options import OpenAICriticOptions
from cgrpo.builtins.critics.budget import Budget
from cgrpo.builtins.critics.cache import CritiqueCache, cache_key
from cgrpo.builtins.critics.prompts import parse_verdict, resolve_template
from cgrpo.builtins.critics.replies import FIXES, UNUSABLE, Reply, strip_thinking
from cgrpo.builtins.critics.rule import ground_truth_text
from cgrpo.builtins.critics.transport import Fatal, Requester, Retryable
from cgrpo.errors import CgrpoError
from cgrpo.types import BUDGET_EXHAUSTED, Critique, CritiqueRequest

log = logging.getLogger(__name__)

# the critic's running totals (critique/<name>_total): requests and their outcomes;
# the kinds of unusable reply (UNUSABLE's keys); thinking seen; reasoning tokens billed
TOTALS = (
    "requests", "retries", "failures", "cached", "budget_fallbacks", *UNUSABLE,
    "truncated_retries", "think_stripped", "separate_reasoning", "reasoning_tokens",
)  # fmt: skip


class _BudgetSpent(Exception):
    pass


class OpenAICritic:
    """Chain-of-thought critiques from an OpenAI-compatible API, cached and budgeted."""

    name = "openai"
    Options = OpenAICriticOptions

    def __init__(self, options: OpenAICriticOptions, context: Any = None):
        self.options = options
        self.template = resolve_template(options.template, options.template_text, options.system)
        self.cache = CritiqueCache(options.cache_dir) if options.cache else None
        self.budget = Budget(
            options.budget_usd, options.input_price_per_million, options.output_price_per_million
        )
        self.totals = dict.fromkeys(TOTALS, 0)
        self._said: set[str] = set()
        self._requester = Requester(options, _api_key(options), self.totals, self._say)
        self._slots: asyncio.Semaphore | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="cgrpo-openai-critic"
        )
        self._thread.start()
        self._run(self._requester.open())

    # -- plumbing ---------------------------------------------------------------------
    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _say(self, key: str, message: str, *args: Any) -> None:
        """A warning logged once per ``key`` (train.log; the console for cgrpo critique)."""
        if key not in self._said:
            self._said.add(key)
            log.warning(message, *args)

    def close(self) -> None:
        if self._loop.is_running():
            self._run(self._requester.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    @property
    def spent_usd(self) -> float:
        return self.budget.spent

    @property
    def reserved_usd(self) -> float:
        """Worst-case cost of the requests in flight."""
        return self.budget.reserved

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: spend so far (the cache itself lives on disk)."""
        return {"spent_usd": self.spent_usd, "totals": dict(self.totals)}

    def telemetry(self) -> dict[str, float]:
        """Cumulative numbers of this critic, logged every step under critique/."""
        return {
            "cost_total": self.spent_usd,
            **{f"{k}_total": float(v) for k, v in self.totals.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.budget.spent = float(state.get("spent_usd", 0.0))
        self.totals.update(state.get("totals", {}))

    # -- the critic -------------------------------------------------------------------
    def critique(self, requests: Sequence[CritiqueRequest]) -> list[Critique]:
        if not requests:
            return []
        return self._run(self._critique_all(list(requests)))

    def critique_async(self, requests: Sequence[CritiqueRequest]) -> Future:
        """Start critiquing and return at once: a future of what :meth:`critique` returns.
        The trainer sends each group's requests as soon as the group is verified, while
        other groups are still sampled; batches in flight together share ``concurrency``
        and the rate limit."""
        return asyncio.run_coroutine_threadsafe(self._critique_all(list(requests)), self._loop)

    async def _critique_all(self, requests: list[CritiqueRequest]) -> list[Critique]:
        if self._slots is None:  # one for every batch in flight: concurrency is per critic
            self._slots = asyncio.Semaphore(self.options.concurrency)
        sem = self._slots

        async def one(req: CritiqueRequest) -> Critique:
            async with sem:
                return await self._critique_one(req)

        return list(await asyncio.gather(*(one(r) for r in requests)))

    def _key_for(self, req: CritiqueRequest) -> str:
        o = self.options
        effort = {} if o.reasoning_effort is None else {"reasoning_effort": o.reasoning_effort}
        return cache_key(
            question=req.problem.question,
            response=req.response,
            answer=req.problem.answer,
            model=o.model,
            temperature=o.temperature,
            max_tokens=o.max_tokens,
            template=self.template.version,
            **effort,
        )

    def _fallback(
        self, req: CritiqueRequest, error: str, latency: float = 0.0, paid: tuple = (0, 0, 0.0)
    ) -> Critique:
        """The ground-truth critique in place of one that failed; ``paid`` is what the
        requests for it cost all the same (prompt tokens, completion tokens, USD)."""
        return Critique(
            ground_truth_text(req.verdict.correct, req.problem.answer),
            self.name,
            fallback=True,
            error=error,
            latency_s=latency,
            prompt_tokens=paid[0],
            completion_tokens=paid[1],
            cost=paid[2],
        )

    async def _critique_one(self, req: CritiqueRequest) -> Critique:
        key = self._key_for(req)
        hit = self.cache.get(key) if self.cache is not None else None
        text = strip_thinking(hit["text"])[0] if hit is not None else ""
        if text:  # (a critique cached by an older version may hold thinking: cut it)
            self.totals["cached"] += 1
            return self._finish(req, text, cached=True)
        result = await self._fresh(req, key)
        if result.error == "disagreement" and self.options.on_disagreement == "retry":
            again = await self._fresh(req, key)  # replaces the cached critique
            again.cost += result.cost
            return again
        return result

    def worst_case_cost(self, req: CritiqueRequest, limit: int | None = None) -> float:
        """The most one request for ``req`` can cost (``Budget.worst_case``)."""
        return self.budget.worst_case(self.template.messages(req), limit or self.options.max_tokens)

    async def _ask(self, messages: list[dict[str, str]], limit: int) -> tuple[Reply, float]:
        """One reply and its cost, within the budget (``_BudgetSpent`` when it cannot be)."""
        worst = self.budget.worst_case(messages, limit) if self.budget.cap is not None else 0.0
        if not await self.budget.reserve(worst):
            self.totals["budget_fallbacks"] += 1
            self._say(
                "budget",
                "critic openai: budget_usd %.4f reached (spent %.4f; one more request could "
                "cost up to %.4f); critiques fall back to the ground-truth critique (counted "
                "in critique/budget_fallbacks)",
                self.budget.cap, self.budget.spent, worst,
            )  # fmt: skip
            raise _BudgetSpent()
        cost = 0.0
        try:
            reply = await self._requester.send(messages, limit)
            cost = self.budget.cost(reply.prompt_tokens, reply.completion_tokens)
        finally:
            await self.budget.settle(worst, cost)
        self._count(reply, limit)
        return reply, cost

    def _count(self, reply: Reply, limit: int) -> None:
        self.totals["think_stripped"] += reply.think_stripped
        self.totals["separate_reasoning"] += reply.separate_reasoning
        self.totals["reasoning_tokens"] += reply.reasoning_tokens
        if reply.completion_tokens > limit:
            self._say(
                "limit ignored",
                "critic openai: a reply of %d completion tokens came back for a limit of %d "
                "sent as %s: the endpoint ignores that parameter, so budget_usd cannot hold; "
                "set critic.options.token_limit_param to the one it reads",
                reply.completion_tokens, limit, self._requester.shape.limit_param,
            )  # fmt: skip

    async def _fresh(self, req: CritiqueRequest, key: str) -> Critique:
        """One critique from the API, accounted and cached; a reply cut at the token limit
        is asked once more with ``truncated_retry_tokens`` when the recipe sets it."""
        o = self.options
        limits = [o.max_tokens] + ([o.truncated_retry_tokens] if o.truncated_retry_tokens else [])
        messages = self.template.messages(req)
        started = time.perf_counter()
        paid = [0, 0, 0.0]
        try:
            for limit in limits:
                reply, cost = await self._ask(messages, limit)
                paid = [paid[0] + reply.prompt_tokens, paid[1] + reply.completion_tokens,
                        paid[2] + cost]  # fmt: skip
                if reply.failure != "truncated" or limit == limits[-1]:
                    break
                self.totals["truncated_retries"] += 1
        except _BudgetSpent:
            return self._fallback(req, BUDGET_EXHAUSTED, paid=tuple(paid))
        except (Retryable, Fatal) as exc:
            self.totals["failures"] += 1
            log.warning("critic openai (%s): giving up on one critique: %s", o.model, exc)
            return self._fallback(req, str(exc), time.perf_counter() - started, tuple(paid))
        latency = time.perf_counter() - started
        if reply.failure is not None:
            return self._unusable(req, reply, latency, tuple(paid))
        if self.cache is not None:
            self.cache.put(key, {"text": reply.text, "prompt_tokens": paid[0],
                                 "completion_tokens": paid[1], "model": o.model})  # fmt: skip
        return self._finish(req, reply.text, latency=latency, paid=tuple(paid))

    def _unusable(self, req: CritiqueRequest, reply: Reply, latency: float, paid) -> Critique:
        """A reply that is no critique: a counted failure (never cached), the fallback."""
        assert reply.failure is not None and reply.error is not None
        self.totals[reply.failure] += 1
        self.totals["failures"] += 1
        self._say(
            reply.failure,
            "critic openai (%s): %s -- the ground-truth critique is used (counted in "
            "critique/%s_total; said once); %s",
            self.options.model, reply.error, reply.failure, FIXES[reply.failure],
        )  # fmt: skip
        return self._fallback(req, reply.error, latency, paid)

    def _finish(
        self,
        req: CritiqueRequest,
        text: str,
        *,
        cached: bool = False,
        latency: float = 0.0,
        paid: tuple = (0, 0, 0.0),
    ) -> Critique:
        verdict = parse_verdict(text)
        disagrees = verdict is not None and verdict != req.verdict.correct
        if disagrees and self.options.on_disagreement == "fallback":
            crit = self._fallback(req, "disagreement", latency, paid)
            crit.critic_verdict, crit.cached = verdict, cached
            return crit
        return Critique(
            text.strip(),
            self.name,
            error="disagreement" if disagrees else None,
            critic_verdict=verdict,
            cached=cached,
            prompt_tokens=paid[0],
            completion_tokens=paid[1],
            cost=paid[2],
            latency_s=latency,
        )


def _api_key(options: OpenAICriticOptions) -> str:
    if options.api_key_env is None:
        return "no-key"
    key = os.environ.get(options.api_key_env)
    if not key:
        raise CgrpoError(
            f"critic 'openai': the environment variable {options.api_key_env} is not "
            f"set; export it with your API key (or set critic.options.api_key_env to "
            "the variable that holds it, or null for an endpoint without keys)"
        )
    return key
