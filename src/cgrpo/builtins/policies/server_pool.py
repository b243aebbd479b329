"""The vLLM servers of a ``vllm-server`` backend: one asynchronous HTTP client for all of
them, each request sent to the live server with the fewest requests in flight, and a
request whose server dies or times out sent again to another one.

Everything here runs on the backend's own event loop (:class:`EventLoopThread`), so the
same pool serves the batch interface (``generate``, called from the trainer's thread) and
the async one (``sample``, awaited from the rollout's loop).

Failures are of two kinds. A server failure (refused or dropped connection, timeout, a 5xx
answer) marks that server dead and retries the request elsewhere; the weight sync checks
dead servers again and takes them back when they answer. A rejected request (a 4xx answer:
a prompt over the server's context, a bad parameter) would be rejected by every server, so
it stops the step with the server's own message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from cgrpo.errors import TrainingError

if TYPE_CHECKING:  # httpx is imported when the first request goes out
    import httpx

log = logging.getLogger(__name__)
T = TypeVar("T")

GENERATE = "/inference/v1/generate"  # vLLM's token-in/token-out endpoint (--enable-scale-out)


class ServerFailed(Exception):
    """The server did not answer (connection, timeout) or answered with a server error."""


class EventLoopThread:
    """An asyncio loop running in a daemon thread: coroutines are submitted from any
    thread and their results awaited there (blocking) or from another loop."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.submit(coro).result()

    def close(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()


@dataclass(eq=False)
class Server:
    """One server as the pool sees it."""

    url: str
    alive: bool = True
    inflight: int = 0
    answered: int = 0  # requests it answered
    error: str = ""  # why it was last marked dead
    version: str | None = None  # weight version it holds, as last set or seen
    info: dict[str, Any] = field(default_factory=dict)  # vLLM version, model, context
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one weight swap at a time


class ServerPool:
    """The servers and the client that talks to them (use only on the pool's loop)."""

    def __init__(
        self,
        urls: list[str],
        *,
        request_timeout: float,
        max_inflight: int,
        api_key: str | None = None,
        connect_timeout: float = 10.0,
    ):
        self.servers = [Server(u.rstrip("/")) for u in urls]
        self.request_timeout, self.connect_timeout = request_timeout, connect_timeout
        self.max_inflight = max_inflight
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.retried = 0  # requests sent again after their server failed
        self._client: httpx.AsyncClient | None = None
        self._slots: dict[str, asyncio.Semaphore] = {}

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:  # created on the loop that uses it
            import httpx

            self._client = httpx.AsyncClient(
                headers=self.headers,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
                timeout=httpx.Timeout(self.request_timeout, connect=self.connect_timeout),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def live(self) -> list[Server]:
        return [s for s in self.servers if s.alive]

    def mark_dead(self, server: Server, why: str) -> None:
        if server.alive:
            log.warning("vllm-server: %s left the pool: %s", server.url, why)
        server.alive, server.error = False, why

    # -- one call to one server ----------------------------------------------------------
    async def call(
        self,
        server: Server,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """The JSON answer of ``method path`` on ``server`` (None for an empty body).
        Raises :class:`ServerFailed` for a server failure and :class:`TrainingError` for a
        rejected request (4xx), with the server's message."""
        import httpx

        kwargs: dict[str, Any] = {"json": json, "params": params}
        if timeout is not None:
            kwargs["timeout"] = httpx.Timeout(timeout, connect=min(timeout, self.connect_timeout))
        try:
            response = await self.client.request(method, server.url + path, **kwargs)
        except httpx.HTTPError as exc:  # connect, read, timeout, protocol errors
            raise ServerFailed(f"{type(exc).__name__}: {exc or 'no answer'}") from exc
        if response.status_code >= 500:
            raise ServerFailed(f"HTTP {response.status_code}: {response.text[:300]}")
        if response.status_code >= 400:
            raise TrainingError(
                f"vLLM server {server.url} rejected {method} {path} (HTTP "
                f"{response.status_code}): {response.text[:500]}"
            )
        return response.json() if response.content else None

    # -- requests spread over the servers --------------------------------------------------
    def _pick(self, exclude: set[str]) -> Server:
        """The live server with the fewest requests in flight (first listed on a tie)."""
        candidates = [s for s in self.live() if s.url not in exclude] or self.live()
        if not candidates:
            raise TrainingError(self.none_answer())
        return min(candidates, key=lambda s: s.inflight)

    def none_answer(self) -> str:
        detail = "; ".join(f"{s.url}: {s.error or 'dead'}" for s in self.servers)
        return (
            f"no vLLM server answers ({detail}). Check that the servers run and are "
            "reachable from this machine (docs/vllm-server.md); a restarted server rejoins "
            "at the next weight sync"
        )

    async def on_any(self, send: Callable[[Server], Awaitable[T]]) -> T:
        """``send(server)`` on the least busy live server; on a server failure, that server
        is marked dead and ``send`` goes to another; a TrainingError when none is left."""
        tried: set[str] = set()
        while True:
            server = self._pick(tried)
            slot = self._slots.setdefault(server.url, asyncio.Semaphore(self.max_inflight))
            server.inflight += 1
            try:
                async with slot:
                    result = await send(server)
                server.answered += 1
                return result
            except ServerFailed as exc:
                self.mark_dead(server, str(exc))
                tried.add(server.url)
                self.retried += 1
            finally:
                server.inflight -= 1

    # -- the state of each server ---------------------------------------------------------
    async def wait_ready(self, timeout: float, alive: Callable[[], None] | None = None) -> None:
        """Wait until every server answers /health, or until ``timeout`` (then go on with
        those that do; a TrainingError when none does). ``alive`` raises when a server
        that cgrpo started has exited."""
        deadline = time.monotonic() + timeout
        pending = list(self.servers)
        while pending and time.monotonic() < deadline:
            if alive is not None:
                alive()
            answers = await asyncio.gather(*(self.healthy(s) for s in pending))
            pending = [s for s, ok in zip(pending, answers, strict=True) if not ok]
            if pending:
                await asyncio.sleep(1.0)
        for s in self.servers:
            s.alive = s not in pending
            if s in pending:
                s.error = f"no answer to /health within {timeout:.0f} s"
        if not self.live():
            raise TrainingError(self.none_answer())
        for s in pending:
            log.warning("vllm-server: %s: %s; going on without it", s.url, s.error)

    async def healthy(self, server: Server, timeout: float = 5.0) -> bool:
        try:
            await self.call(server, "GET", "/health", timeout=timeout)
        except (ServerFailed, TrainingError) as exc:
            server.error = str(exc)
            return False
        return True

    async def refresh(self) -> None:
        """Check every server's health (the dead ones too): those that answer are live."""
        answers = await asyncio.gather(*(self.healthy(s) for s in self.servers))
        for server, ok in zip(self.servers, answers, strict=True):
            if ok and not server.alive:
                log.info("vllm-server: %s answers again; it rejoins the pool", server.url)
            server.alive = ok
