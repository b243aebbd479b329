"""``budget_usd`` is a hard cap that gets spent: requests reserve their worst case, wait
for requests in flight to settle when the cap is near, and fall back only when nothing is
in flight and one more worst case does not fit.

Before, a request that did not fit beside the reservations in flight fell back at once:
at concurrency 32, 163 of 206 requests fell back with 61% of a small cap unspent."""

import math

import pytest

from tests.unit.api_critic import request

IN, OUT = 10.0, 30.0  # USD per million tokens
ACTUAL = (100 * IN + 20 * OUT) / 1e6  # every answer of the fake server: 100 + 20 tokens


@pytest.mark.parametrize("concurrency", [1, 8, 32])
def test_the_cap_is_spent_to_within_one_worst_case_and_never_passed(
    make_critic, server, concurrency, caplog
):
    """The number of paid requests is the same at any concurrency: with worst case W per
    request and actual cost A, a request is refused only when nothing is in flight and
    spent + W > cap, and one admitted beside others in flight can only have been admitted
    if all of them fit at W >= A, so the paid count N satisfies N*A + W > cap >= (N-1)*A + W:
    N = floor((cap - W) / A) + 1. With cap = W + 99.5 A that is 100 paid of 120."""
    critic = make_critic(input_price_per_million=IN, output_price_per_million=OUT,
                         max_tokens=256, concurrency=concurrency, cache=False)  # fmt: skip
    reqs = [request(response=f"answer {i:03d}") for i in range(120)]  # equal lengths
    worst = critic.worst_case_cost(reqs[0])
    assert worst / ACTUAL > 5  # the worst case (256 completion tokens) is far from the cost
    critic.budget.cap = worst + 99.5 * ACTUAL
    results = critic.critique(reqs)
    paid = [c for c in results if not c.fallback]
    assert len(paid) == math.floor((critic.budget.cap - worst) / ACTUAL) + 1 == 100
    assert len(server.requests) == 100
    assert critic.spent_usd == pytest.approx(100 * ACTUAL)
    assert critic.spent_usd <= critic.budget.cap
    assert critic.budget.spent_at_first_refusal / critic.budget.cap > 0.85
    refused = [c for c in results if c.fallback]
    assert len(refused) == 20 and all(c.error == "budget exhausted" for c in refused)
    assert critic.telemetry()["budget_fallbacks_total"] == 20
    assert critic.reserved_usd == pytest.approx(0.0) and critic.budget.in_flight == 0
    reached = [r for r in caplog.records if "budget_usd" in r.getMessage()]
    assert len(reached) == 1 and reached[0].levelname == "WARNING"  # said once, in train.log


def test_reasoning_tokens_are_reserved_and_billed(make_critic, server):
    """A reasoning model's reply can use the whole limit (reasoning and answer are one
    budget of max_completion_tokens): here every reply is 236 reasoning + 20 answer tokens
    = the limit, so each costs nearly its worst case, and the cap still holds."""
    server.kind, server.reasoning_tokens = "openai-reasoning", 236
    critic = make_critic(model="gpt-5-mini", input_price_per_million=IN,
                         output_price_per_million=OUT, max_tokens=256, cache=False,
                         concurrency=8)  # fmt: skip
    reqs = [request(response=f"answer {i:03d}") for i in range(30)]
    worst, cost = critic.worst_case_cost(reqs[0]), (100 * IN + 256 * OUT) / 1e6
    critic.budget.cap = worst + 9.5 * cost
    results = critic.critique(reqs)
    paid = [c for c in results if not c.fallback]
    assert len(paid) == 10 and critic.spent_usd <= critic.budget.cap
    assert all(c.completion_tokens == 256 and c.cost == pytest.approx(cost) for c in paid)
    assert critic.telemetry()["reasoning_tokens_total"] == 10 * 236


def test_failed_requests_give_their_reservation_back(make_critic, server):
    """A request that fails is assumed unbilled: its reservation returns to the cap and the
    requests waiting for room go out."""
    server.script.extend(["400"] * 5)
    critic = make_critic(input_price_per_million=IN, output_price_per_million=OUT,
                         max_tokens=256, concurrency=4, cache=False)  # fmt: skip
    reqs = [request(response=f"answer {i:03d}") for i in range(12)]
    worst = critic.worst_case_cost(reqs[0])
    critic.budget.cap = worst + 6.5 * ACTUAL
    results = critic.critique(reqs)
    assert sum(c.fallback and c.error != "budget exhausted" for c in results) == 5
    assert sum(not c.fallback for c in results) == 7  # floor(6.5) + 1
    assert critic.spent_usd == pytest.approx(7 * ACTUAL)
