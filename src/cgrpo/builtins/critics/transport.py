"""Sending one critique request: rate limit, retries with backoff, and the request shape
the endpoint accepts (``endpoint.RequestShape``).

Retried: rate limits (429, honouring Retry-After), timeouts, connection errors, 5xx and
malformed responses. Not retried: other 4xx (a bad request or key will not get better),
except a 400 that asks for another request shape, which is sent again at once in that
shape (it was refused, so not billed) -- each shape change happens at most once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from cgrpo.builtins.critics.endpoint import RequestShape, endpoint_kind, make_client
from cgrpo.builtins.critics.replies import Reply, read_reply

log = logging.getLogger(__name__)


class Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Fatal(Exception):
    pass


class _Reshaped(Exception):
    """The endpoint asked for another request shape, and the shape changed."""


class Requester:
    """Chat-completion requests to one endpoint, on the critic's event loop."""

    def __init__(self, options: Any, key: str, totals: dict[str, int], say: Callable):
        self.options = options
        self.shape = RequestShape(options, endpoint_kind(options.base_url, options.api_version))
        self.totals = totals
        self.say = say  # say(key, message): a warning logged once per key
        self._key = key
        self._client: Any = None
        self._sent: deque[float] = deque()
        self._rate_lock: asyncio.Lock | None = None
        self._probe_lock: asyncio.Lock | None = None

    async def open(self) -> None:
        o = self.options
        self._client = make_client(o.base_url, o.api_version, self._key, o.timeout_s)
        self._rate_lock, self._probe_lock = asyncio.Lock(), asyncio.Lock()

    async def close(self) -> None:
        await self._client.close()

    async def send(self, messages: list[dict[str, str]], limit: int) -> Reply:
        """One reply with at most ``limit`` completion tokens. Until the endpoint has
        accepted a request, requests go one at a time: a shape it refuses is learnt from
        one refused request, not from one per request in flight."""
        if not self.shape.confirmed:
            assert self._probe_lock is not None
            async with self._probe_lock:
                if not self.shape.confirmed:
                    try:
                        return await self._with_retries(messages, limit)
                    finally:  # answered or failed for another reason: the shape is known
                        self.shape.confirmed = True
        return await self._with_retries(messages, limit)

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

    async def _with_retries(self, messages: list[dict[str, str]], limit: int) -> Reply:
        o = self.options
        attempt = 0
        while True:
            await self._wait_for_rate()
            self.totals["requests"] += 1
            try:
                return await self._call(messages, limit)
            except _Reshaped:
                continue  # not a retry: the same request in the shape the endpoint asked for
            except Retryable as exc:
                if attempt >= o.max_retries:
                    raise Retryable(f"{exc} (after {attempt + 1} attempts)") from exc
                delay = min(o.max_backoff_s, o.backoff_s * 2**attempt)
                delay = delay + random.uniform(0, delay)  # jitter: do not retry in lockstep
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, o.max_backoff_s))
                attempt += 1
                self.totals["retries"] += 1
                await asyncio.sleep(delay)

    async def _call(self, messages: list[dict[str, str]], limit: int) -> Reply:
        import openai

        o = self.options
        sent = self.shape.params(limit)
        try:
            resp = await self._client.chat.completions.create(
                model=o.model, messages=messages, timeout=o.timeout_s, **sent
            )
        except openai.RateLimitError as exc:
            raise Retryable(f"rate limited by {o.model} (429)", _retry_after(exc)) from exc
        except openai.APITimeoutError as exc:
            raise Retryable(f"{o.model} timed out after {o.timeout_s}s") from exc
        except openai.APIConnectionError as exc:
            raise Retryable(f"cannot reach {o.base_url or 'api.openai.com'}: {exc}") from exc
        except openai.InternalServerError as exc:
            raise Retryable(f"{o.model} server error {exc.status_code}") from exc
        except openai.AuthenticationError as exc:
            raise Fatal(
                f"{o.model}: authentication failed (401); check the key in {o.api_key_env}"
            ) from exc
        except openai.BadRequestError as exc:
            change = self.shape.adapt(exc, sent)
            if change is None:
                raise Fatal(f"{o.model}: request rejected (400): {exc.message}"
                            f"{self.shape.hint(exc)}") from exc  # fmt: skip
            if change:
                self.say(change, f"critic openai: {change}")
            raise _Reshaped() from exc
        except openai.APIStatusError as exc:
            raise Fatal(f"{o.model}: request rejected ({exc.status_code}): {exc.message}") from exc
        except (ValueError, openai.APIResponseValidationError) as exc:  # malformed JSON body
            raise Retryable(f"{o.model}: malformed response: {exc}") from exc
        try:
            return read_reply(resp)
        except ValueError as exc:
            raise Retryable(f"{o.model}: response without a message") from exc


def _retry_after(exc: Any) -> float | None:
    try:
        value = exc.response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, ValueError):
        return None
