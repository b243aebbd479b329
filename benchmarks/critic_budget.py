"""How much of a small ``budget_usd`` the ``openai`` critic spends before its first budget
fallback, at concurrency 1, 8 and 32, through the real ``openai`` SDK against the local
server of tests/fake_openai.py (no network).

    python benchmarks/critic_budget.py [--requests 206] [--cap-requests 110] [--reps 3]
                                       [--concurrency 1,8,32] [--json FILE]

The critic's settings are recipes/api-critic-cpu.yaml's (max_tokens 256, $0.15 / $0.60
per million tokens), so a request's worst case is about 8x what it costs. The server
answers each request after ``--latency`` seconds with 100 prompt tokens and 10-40
completion tokens (drawn from a hash of the request, so every run bills the same), and
the cap is what ``--cap-requests`` requests cost on average. Prints, per concurrency:
requests paid and fallen back, the spend at the first fallback and at the end as shares
of the cap, wall and CPU seconds. Run it with PYTHONPATH pointing at another checkout's
src/ to measure that version (the numbers in issue 29 item 8: at concurrency 32, 163 of
206 requests fell back with 61% of the cap unspent).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.fake_openai

PRICES = (0.15, 0.60)  # recipes/api-critic-cpu.yaml
MEAN_COST = (100 * PRICES[0] + 25 * PRICES[1]) / 1e6  # 10-40 completion tokens: mean 25


def answer_tokens(body: dict) -> int:
    digest = hashlib.sha256(json.dumps(body["messages"]).encode()).digest()
    return 10 + digest[0] % 31


def measure(server, requests, concurrency: int, cap: float) -> dict:
    """One critic, one batch of requests; the spend when the first fallback was made."""
    from cgrpo.interfaces import BuildContext
    from cgrpo.plugins import get_registries
    from cgrpo.types import BUDGET_EXHAUSTED

    options = {"base_url": server.base_url, "api_key_env": None, "cache": False,
               "model": "fake", "concurrency": concurrency, "max_tokens": 256,
               "input_price_per_million": PRICES[0], "output_price_per_million": PRICES[1],
               "budget_usd": cap}  # fmt: skip
    critic = get_registries()["critic"].build("openai", options, BuildContext())
    first: list[float] = []
    fallback = critic._fallback

    def record(req, error, *args, **kwargs):  # the spend when the first refusal is made
        if error == BUDGET_EXHAUSTED and not first:
            first.append(critic.spent_usd)
        return fallback(req, error, *args, **kwargs)

    critic._fallback = record
    started, cpu = time.perf_counter(), time.process_time()
    out = critic.critique(requests)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    critic.close()
    return {
        "concurrency": concurrency,
        "paid": sum(not c.fallback for c in out),
        "fallbacks": sum(c.fallback for c in out),
        "share_at_first_fallback": first[0] / cap if first else None,
        "spent_share": critic.spent_usd / cap,
        "over_cap": critic.spent_usd > cap,
        "wall_s": wall,
        "cpu_s": cpu,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=206)
    p.add_argument("--cap-requests", type=float, default=110)
    p.add_argument("--latency", type=float, default=0.05)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()

    import cgrpo
    from cgrpo.types import CritiqueRequest, Problem, Verdict
    from tests.fake_openai import FakeOpenAI

    cap = args.cap_requests * MEAN_COST
    requests = [
        CritiqueRequest(Problem(str(i), f"What is {i} + {i}?", str(2 * i)), f"It is {i}.",
                        Verdict(0.0, False, str(i)))
        for i in range(args.requests)
    ]  # fmt: skip
    print(f"cgrpo from {Path(cgrpo.__file__).parent}; {args.requests} requests, cap "
          f"${cap:.6f} (~{args.cap_requests:g} requests' cost)")  # fmt: skip
    print(f"{'rep':>4}{'conc':>6}{'paid':>6}{'fallbk':>8}{'1st fallback':>14}{'spent':>8}"
          f"{'over':>6}{'wall s':>8}{'cpu s':>7}")  # fmt: skip
    rows = []
    with FakeOpenAI(latency_s=args.latency) as server:
        server.answer_tokens = answer_tokens
        for rep in range(args.reps):
            for concurrency in [int(c) for c in args.concurrency.split(",")]:
                row = {"rep": rep, **measure(server, requests, concurrency, cap)}
                rows.append(row)
                share = row["share_at_first_fallback"]
                print(f"{rep:>4}{concurrency:>6}{row['paid']:>6}{row['fallbacks']:>8}"
                      f"{'-' if share is None else f'{share:.1%}':>14}"
                      f"{row['spent_share']:>8.1%}{row['over_cap']!s:>6}"
                      f"{row['wall_s']:>8.2f}{row['cpu_s']:>7.2f}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
