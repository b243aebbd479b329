"""``openai``: critiques from any OpenAI-compatible endpoint, cheap, bounded and never
fatal.

- the official SDK (``AsyncOpenAI``) on one event loop in a background thread, so HTTP
  connections are reused across steps; bounded concurrency and an optional
  requests-per-minute limit;
- per-request timeout; retries with exponential backoff and jitter on rate limits (429,
  honouring Retry-After), timeouts, connection errors, 5xx and malformed responses; no
  retry on other 4xx (a bad request or key will not get better);
- a content-addressed on-disk cache keyed by (question, response, reference answer,
  model, temperature, max tokens, template version);
- token and cost accounting from the recipe's prices, and a hard budget: once spent,
  every further critique is the fallback;
- on final failure the ground-truth critique is used, marked ``fallback`` and counted.

The API key is read from the environment variable the recipe names (``api_key_env``);
it is never written to logs, samples, checkpoints or the resolved recipe.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from pydantic import Field, model_validator

from cgrpo.builtins.critics.cache import CritiqueCache, cache_key
from cgrpo.builtins.critics.options import CoTOptions
from cgrpo.builtins.critics.prompts import parse_verdict, resolve_template
from cgrpo.builtins.critics.rule import ground_truth_text
from cgrpo.errors import CgrpoError
from cgrpo.types import BUDGET_EXHAUSTED, Critique, CritiqueRequest

log = logging.getLogger(__name__)


class OpenAICriticOptions(CoTOptions):
    model: str = Field("gpt-4o-mini", description="model name at the endpoint")
    base_url: str | None = Field(
        None, description="OpenAI-compatible endpoint (None = api.openai.com)"
    )
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="environment variable holding the key (None: no key)"
    )
    concurrency: int = Field(
        128,
        ge=1,
        description="requests in flight at once: 128 finishes a step's ~500 critiques of ~1 s "
        "in ~7 s (8 took 66 s); set requests_per_minute to stay under a key's limit",
    )
    requests_per_minute: int | None = Field(None, ge=1, description="rate limit; None = off")
    timeout_s: float = Field(60.0, gt=0, description="per-request timeout")
    max_retries: int = Field(4, ge=0, description="retries after the first attempt")
    backoff_s: float = Field(1.0, ge=0, description="first backoff; doubles per retry")
    max_backoff_s: float = Field(30.0, ge=0, description="longest single backoff")
    input_price_per_million: float = Field(0.0, ge=0, description="USD per 1M prompt tokens")
    output_price_per_million: float = Field(0.0, ge=0, description="USD per 1M completion tokens")
    budget_usd: float | None = Field(
        None,
        gt=0,
        description="hard cap on spend (needs the prices): each request reserves its worst "
        "case before it is sent, so spend never exceeds it; then the fallback critique is used",
    )
    cache: bool = Field(True, description="reuse critiques from the on-disk cache")
    cache_dir: str = Field(
        "~/.cache/cgrpo/critiques", description="where cached critiques live (shareable)"
    )

    @model_validator(mode="after")
    def _budget_needs_prices(self) -> OpenAICriticOptions:
        if (
            self.budget_usd is not None
            and self.input_price_per_million == 0
            and self.output_price_per_million == 0
        ):
            raise ValueError(
                "budget_usd is set but input_price_per_million and output_price_per_million "
                "are both 0, so nothing would ever count against it; set the model's prices "
                "(USD per million tokens) or remove budget_usd"
            )
        return self


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Fatal(Exception):
    pass


class OpenAICritic:
    """Chain-of-thought critiques from an OpenAI-compatible API, cached and budgeted."""

    name = "openai"
    Options = OpenAICriticOptions

    def __init__(self, options: OpenAICriticOptions, context: Any = None):
        self.options = options
        self.template = resolve_template(options.template, options.template_text, options.system)
        if options.api_key_env is not None:
            key = os.environ.get(options.api_key_env)
            if not key:
                raise CgrpoError(
                    f"critic 'openai': the environment variable {options.api_key_env} is not "
                    f"set; export it with your API key (or set critic.options.api_key_env to "
                    "the variable that holds it, or null for an endpoint without keys)"
                )
        else:
            key = "no-key"
        self._key = key
        self.cache = CritiqueCache(options.cache_dir) if options.cache else None
        self.spent_usd = 0.0
        self.reserved_usd = 0.0  # worst-case cost of the requests in flight
        self.totals = {
            "requests": 0,
            "retries": 0,
            "failures": 0,
            "cached": 0,
            "budget_fallbacks": 0,
        }
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="cgrpo-openai-critic"
        )
        self._thread.start()
        self._client = self._run(self._make_client())
        self._sent: deque[float] = deque()
        self._rate_lock: asyncio.Lock | None = None
        self._slots: asyncio.Semaphore | None = None

    # -- plumbing ---------------------------------------------------------------------
    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _make_client(self):
        from openai import AsyncOpenAI

        return AsyncOpenAI(
            base_url=self.options.base_url,
            api_key=self._key,
            max_retries=0,
            timeout=self.options.timeout_s,
        )

    def close(self) -> None:
        if self._loop.is_running():
            self._run(self._client.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

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
        self.spent_usd = float(state.get("spent_usd", 0.0))
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
        if self._rate_lock is None:
            self._rate_lock = asyncio.Lock()
        if self._slots is None:  # one for every batch in flight: concurrency is per critic
            self._slots = asyncio.Semaphore(self.options.concurrency)
        sem = self._slots

        async def one(req: CritiqueRequest) -> Critique:
            async with sem:
                return await self._critique_one(req)

        return list(await asyncio.gather(*(one(r) for r in requests)))

    def _key_for(self, req: CritiqueRequest) -> str:
        o = self.options
        return cache_key(
            question=req.problem.question,
            response=req.response,
            answer=req.problem.answer,
            model=o.model,
            temperature=o.temperature,
            max_tokens=o.max_tokens,
            template=self.template.version,
        )

    def _fallback(self, req: CritiqueRequest, error: str, latency: float = 0.0) -> Critique:
        return Critique(
            ground_truth_text(req.verdict.correct, req.problem.answer),
            self.name,
            fallback=True,
            error=error,
            latency_s=latency,
        )

    async def _critique_one(self, req: CritiqueRequest) -> Critique:
        key = self._key_for(req)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self.totals["cached"] += 1
            return self._finish(req, hit["text"], cached=True)
        result = await self._fresh(req, key)
        if result.error == "disagreement" and self.options.on_disagreement == "retry":
            again = await self._fresh(req, key)  # replaces the cached critique
            again.cost += result.cost
            return again
        return result

    def worst_case_cost(self, req: CritiqueRequest) -> float:
        """The most one request for ``req`` can cost: every prompt byte a token (a
        byte-level BPE token is at least one byte) plus a few tokens of chat framing per
        message, and ``max_tokens`` of completion, at the recipe's prices."""
        o = self.options
        messages = self.template.messages(req)
        prompt = sum(len(str(m.get("content", "")).encode()) + 8 for m in messages) + 8
        return (
            prompt * o.input_price_per_million + o.max_tokens * o.output_price_per_million
        ) / 1e6

    async def _fresh(self, req: CritiqueRequest, key: str) -> Critique:
        """One critique from the API (with retries), accounted and cached.

        The budget is a hard cap at any concurrency: each request reserves its worst-case
        cost before it is sent (check and reserve happen without an await between them,
        so requests in flight are counted), and the actual cost replaces the reservation
        when the answer arrives. A request that fails is assumed unbilled."""
        budget = self.options.budget_usd
        worst = self.worst_case_cost(req) if budget is not None else 0.0
        if budget is not None and self.spent_usd + self.reserved_usd + worst > budget:
            if not self.totals["budget_fallbacks"]:
                log.warning(
                    "critic openai: budget_usd %.4f reached (spent %.4f, %.4f reserved by "
                    "requests in flight); critiques fall back to the ground-truth critique "
                    "(counted in critique/budget_fallbacks)",
                    budget,
                    self.spent_usd,
                    self.reserved_usd,
                )
            self.totals["budget_fallbacks"] += 1
            return self._fallback(req, BUDGET_EXHAUSTED)
        self.reserved_usd += worst
        started = time.perf_counter()
        try:
            text, usage = await self._call_with_retries(req)
        except (_Retryable, _Fatal) as exc:
            self.totals["failures"] += 1
            log.warning(
                "critic openai (%s): giving up on one critique: %s", self.options.model, exc
            )
            return self._fallback(req, str(exc), time.perf_counter() - started)
        finally:
            self.reserved_usd -= worst
        cost = (
            usage[0] * self.options.input_price_per_million
            + usage[1] * self.options.output_price_per_million
        ) / 1e6
        self.spent_usd += cost
        if self.cache is not None:
            self.cache.put(
                key,
                {
                    "text": text,
                    "prompt_tokens": usage[0],
                    "completion_tokens": usage[1],
                    "model": self.options.model,
                },
            )
        return self._finish(
            req,
            text,
            latency=time.perf_counter() - started,
            prompt_tokens=usage[0],
            completion_tokens=usage[1],
            cost=cost,
        )

    def _finish(
        self,
        req: CritiqueRequest,
        text: str,
        *,
        cached: bool = False,
        latency=0.0,
        prompt_tokens=0,
        completion_tokens=0,
        cost=0.0,
    ) -> Critique:
        verdict = parse_verdict(text)
        disagrees = verdict is not None and verdict != req.verdict.correct
        if disagrees and self.options.on_disagreement == "fallback":
            crit = self._fallback(req, "disagreement", latency)
            crit.critic_verdict, crit.cost, crit.cached = verdict, cost, cached
            return crit
        return Critique(
            text.strip(),
            self.name,
            error="disagreement" if disagrees else None,
            critic_verdict=verdict,
            cached=cached,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost=cost,
            latency_s=latency,
        )

    async def _wait_for_rate(self) -> None:
        rpm = self.options.requests_per_minute
        if rpm is None:
            return
        assert self._rate_lock is not None
        async with self._rate_lock:
            now = time.monotonic()
            while self._sent and now - self._sent[0] >= 60.0:
                self._sent.popleft()
            if len(self._sent) >= rpm:
                await asyncio.sleep(60.0 - (now - self._sent[0]))
                self._sent.popleft()
            self._sent.append(time.monotonic())

    async def _call_with_retries(self, req: CritiqueRequest) -> tuple[str, tuple[int, int]]:
        o = self.options
        attempt = 0
        while True:
            await self._wait_for_rate()
            self.totals["requests"] += 1
            try:
                return await self._call(req)
            except _Retryable as exc:
                if attempt >= o.max_retries:
                    raise _Retryable(f"{exc} (after {attempt + 1} attempts)") from exc
                delay = min(o.max_backoff_s, o.backoff_s * 2**attempt)
                delay = delay + random.uniform(0, delay)  # jitter: do not retry in lockstep
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, o.max_backoff_s))
                attempt += 1
                self.totals["retries"] += 1
                await asyncio.sleep(delay)

    async def _call(self, req: CritiqueRequest) -> tuple[str, tuple[int, int]]:
        import openai

        o = self.options
        try:
            resp = await self._client.chat.completions.create(
                model=o.model,
                messages=self.template.messages(req),
                temperature=o.temperature,
                max_tokens=o.max_tokens,
                timeout=o.timeout_s,
            )
        except openai.RateLimitError as exc:
            raise _Retryable(f"rate limited by {o.model} (429)", _retry_after(exc)) from exc
        except openai.APITimeoutError as exc:
            raise _Retryable(f"{o.model} timed out after {o.timeout_s}s") from exc
        except openai.APIConnectionError as exc:
            raise _Retryable(f"cannot reach {o.base_url or 'api.openai.com'}: {exc}") from exc
        except openai.InternalServerError as exc:
            raise _Retryable(f"{o.model} server error {exc.status_code}") from exc
        except openai.AuthenticationError as exc:
            raise _Fatal(
                f"{o.model}: authentication failed (401); check the key in {o.api_key_env}"
            ) from exc
        except openai.APIStatusError as exc:
            raise _Fatal(f"{o.model}: request rejected ({exc.status_code}): {exc.message}") from exc
        except (ValueError, openai.APIResponseValidationError) as exc:  # malformed JSON body
            raise _Retryable(f"{o.model}: malformed response: {exc}") from exc
        if not resp.choices or resp.choices[0].message.content is None:
            raise _Retryable(f"{o.model}: response without a message")
        usage = resp.usage
        tokens = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
        return resp.choices[0].message.content, tokens


def _retry_after(exc: Any) -> float | None:
    try:
        value = exc.response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, ValueError):
        return None
