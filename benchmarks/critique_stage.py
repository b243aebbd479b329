"""The critique stage of a step with the ``openai`` critic: 512 requests against a local
OpenAI-compatible server answering each after 1 s, at the default concurrency and at 8
(the default before), through the real ``openai`` SDK.

    python benchmarks/critique_stage.py [--requests 512] [--latency 1.0] [--reps 2]
                                        [--concurrency 8,DEFAULT]

Prints, per setting, the stage's wall time, the summed request latency and their ratio
(the concurrency achieved); alternating settings over ``--reps`` repetitions. The server
is tests/fake_openai.py on 127.0.0.1 (threaded, one thread per request); no network.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.fake_openai


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=512)
    p.add_argument("--latency", type=float, default=1.0)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--concurrency", default="8,DEFAULT")
    args = p.parse_args()

    from cgrpo.builtins.critics.api import OpenAICriticOptions
    from cgrpo.interfaces import BuildContext
    from cgrpo.plugins import get_registries
    from cgrpo.types import CritiqueRequest, Problem, Verdict
    from tests.fake_openai import FakeOpenAI

    default = OpenAICriticOptions.model_fields["concurrency"].default
    settings = [default if c == "DEFAULT" else int(c) for c in args.concurrency.split(",")]
    requests = [
        CritiqueRequest(Problem(str(i), f"What is {i} + {i}?", str(2 * i)), f"It is {i}.",
                        Verdict(0.0, False, str(i)))
        for i in range(args.requests)
    ]  # fmt: skip
    print(f"{args.requests} critiques, {args.latency:.1f} s each at the server")
    print(f"{'concurrency':>12}{'wall s':>9}{'latency sum s':>15}{'achieved':>10}{'failed':>8}")
    with FakeOpenAI(latency_s=args.latency) as server:
        for _ in range(args.reps):
            for concurrency in settings:
                options = {"base_url": server.base_url, "api_key_env": None, "cache": False,
                           "concurrency": concurrency, "model": "fake"}  # fmt: skip
                critic = get_registries()["critic"].build("openai", options, BuildContext())
                started = time.perf_counter()
                out = critic.critique(requests)
                wall = time.perf_counter() - started
                latency = sum(c.latency_s for c in out)
                failed = sum(c.fallback for c in out)
                mark = " (default)" if concurrency == default else ""
                print(f"{concurrency:>12}{wall:>9.1f}{latency:>15.1f}{latency / wall:>10.1f}"
                      f"{failed:>8}{mark}")  # fmt: skip
                close = getattr(critic, "close", None)
                if callable(close):
                    close()


if __name__ == "__main__":
    main()
