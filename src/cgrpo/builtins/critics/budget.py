"""The API critic's spend: prices, a hard cap, and how requests in flight share it.

A cap can only hold if every request in flight could be paid for at its worst case (a
reply can always run to the token limit), so each request reserves its worst case before
it is sent and the actual cost from the response's usage replaces the reservation when
it settles. What made a small cap go mostly unspent at high concurrency was refusing a
request at once whenever the reservations in flight left no room: most of them settle
at a fraction of their worst case a moment later. So a request that does not fit waits
for the requests in flight to settle and tries again, and falls back only when nothing
is in flight and its worst case still does not fit: the first refusal comes with less
than one worst case left of the cap, and the spend never passes it.
"""

from __future__ import annotations

import asyncio
from typing import Any


def prompt_bound(messages: list[dict[str, Any]]) -> int:
    """At least as many tokens as the messages can be: every byte a token (a byte-level
    BPE token is at least one byte) plus a few tokens of chat framing per message."""
    return sum(len(str(m.get("content", "")).encode()) + 8 for m in messages) + 8


class Budget:
    """Costs at the recipe's prices; with ``cap`` a hard limit on their sum. Lives on the
    critic's event loop (no locks: nothing else touches it)."""

    def __init__(self, cap: float | None, input_price: float, output_price: float):
        self.cap = cap
        self.input_price = input_price
        self.output_price = output_price
        self.spent = 0.0
        self.reserved = 0.0  # worst cases of the requests in flight
        self.in_flight = 0
        self.spent_at_first_refusal: float | None = None
        self._settled: asyncio.Condition | None = None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD of one request (completion tokens include reasoning tokens: billed alike)."""
        return (prompt_tokens * self.input_price + completion_tokens * self.output_price) / 1e6

    def worst_case(self, messages: list[dict[str, Any]], limit: int) -> float:
        """The most one request can cost: its prompt bound and ``limit`` completion tokens
        (the limit bounds reasoning and answer together)."""
        return self.cost(prompt_bound(messages), limit)

    def _fits(self, worst: float) -> bool:
        assert self.cap is not None
        return self.spent + self.reserved + worst <= self.cap

    async def reserve(self, worst: float) -> bool:
        """Hold ``worst`` for a request about to be sent, waiting while requests in flight
        may free room; False when it cannot fit (the budget is spent)."""
        if self.cap is None:
            self.in_flight += 1
            return True
        if self._settled is None:
            self._settled = asyncio.Condition()
        async with self._settled:
            while not self._fits(worst):
                if self.in_flight == 0:
                    if self.spent_at_first_refusal is None:
                        self.spent_at_first_refusal = self.spent
                    return False
                await self._settled.wait()
            self.reserved += worst
            self.in_flight += 1
            return True

    async def settle(self, worst: float, cost: float) -> None:
        """The request holding ``worst`` finished and cost ``cost`` (0 if it failed: a
        failed request is assumed unbilled)."""
        self.reserved -= worst
        self.in_flight -= 1
        self.spent += cost
        if self._settled is not None:
            async with self._settled:
                self._settled.notify_all()
