"""A training run with the ``openai`` critic pointed at a misbehaving local server (the
real SDK over HTTP on 127.0.0.1): the run completes, every failure is counted and the
fallback used; an identical second run is served from the on-disk cache. The hf backend
generates 8 sequences per call here, so a step's first group is critiqued (critique_async)
while the second one is still sampled."""

import json

import pytest

from tests.fake_openai import FakeOpenAI
from tests.helpers import REPO, run_cli

pytestmark = pytest.mark.slow
QUICKSTART = str(REPO / "recipes" / "quickstart-cpu.yaml")


def overrides(tmp_path, base_url, name):
    return [
        "sft.steps=5",
        "train.steps=2",
        "data.task.options.size=30",
        "algorithm.prompts_per_step=2",
        "algorithm.micro_batch_size=16",
        "algorithm.refine=all",
        "policy.name=hf",
        "policy.options.generation_batch_size=8",
        "run.console=plain",
        f"model.path={tmp_path / 'tiny'}",
        f"run.output_dir={tmp_path / 'runs'}",
        f"run.name={name}",
        "critic.name=openai",
        "critic.options.model=judge",
        f"critic.options.base_url={base_url}",
        "critic.options.api_key_env=CGRPO_TEST_KEY",
        "critic.options.timeout_s=0.5",
        "critic.options.max_retries=1",
        "critic.options.backoff_s=0.01",
        "critic.options.concurrency=1",
        f"critic.options.cache_dir={tmp_path / 'cache'}",
        "critic.options.input_price_per_million=1.0",
        "sft.refinement_share=0",
    ]


def metrics(tmp_path, name):
    path = tmp_path / "runs" / name / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_survives_a_misbehaving_critic_and_reuses_the_cache(tmp_path):
    env = {"CGRPO_TEST_KEY": "sk-secret-value"}
    with FakeOpenAI(hang_s=1.5) as server:
        # 2 prompts x 7 responses refined per step, one request at a time (concurrency 1)
        # so the script maps to critiques: 3 recover after a retry, 3 fail for good
        server.script.extend(
            [
                "429",
                "ok",
                "500",
                "ok",
                "malformed",
                "ok",  # retried, fine
                "400",  # not retried: fallback
                "hang",
                "hang",
                "500",
                "500",
            ]
        )  # retries exhausted: fallback
        first = run_cli(
            "run", QUICKSTART, *overrides(tmp_path, server.base_url, "a"), env=env, cwd=tmp_path
        )
        assert first.returncode == 0, first.stdout + first.stderr
        m = metrics(tmp_path, "a")
        assert [x["step"] for x in m] == [1, 2]
        requested = sum(x["critique/requested"] for x in m)
        assert requested == 28
        assert sum(x["critique/failed"] for x in m) == 3
        assert sum(x["critique/fallbacks"] for x in m) == 3
        assert m[-1]["critique/retries_total"] == 5
        assert m[-1]["critique/failures_total"] == 3
        assert m[-1]["critique/cost_total"] > 0
        served = len(server.requests)

        second = run_cli(
            "run", QUICKSTART, *overrides(tmp_path, server.base_url, "b"), env=env, cwd=tmp_path
        )
        assert second.returncode == 0, second.stderr
        m2 = metrics(tmp_path, "b")
        # the 25 successful critiques are cached; only the 3 fallbacks are asked again
        assert sum(x["critique/cached"] for x in m2) == 25
        assert len(server.requests) == served + 3
    run_dir = tmp_path / "runs" / "a"
    for name in ("recipe.yaml", "metrics.jsonl", "samples.jsonl", "train.log"):
        assert "sk-secret-value" not in (run_dir / name).read_text()


def test_critique_command_shows_critiques_and_cost(tmp_path):
    with FakeOpenAI() as server:
        out = run_cli(
            "critique",
            QUICKSTART,
            "-n",
            "4",
            *overrides(tmp_path, server.base_url, "c"),
            env={"CGRPO_TEST_KEY": "k", "COLUMNS": "80"},
            cwd=tmp_path,
        )
        assert out.returncode == 0, out.stderr
        assert len(server.requests) == 4
    lines = out.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80  # readable in an 80-column terminal
    assert "Conclusion: incorrect" in out.stdout
    assert sum(line.startswith("question: What is") for line in lines) == 4
    assert sum(line.startswith("response: ") for line in lines) == 4
    assert "cost_usd 0.0004" in out.stdout
    assert "verdict_agreement 2/4" in out.stdout  # the server always says incorrect


def test_critique_command_exits_non_zero_when_every_critique_failed(tmp_path):
    with FakeOpenAI() as server:
        server.default = "400"  # every request refused: the critic is misconfigured
        out = run_cli(
            "critique",
            QUICKSTART,
            "-n",
            "2",
            *overrides(tmp_path, server.base_url, "e"),
            env={"CGRPO_TEST_KEY": "k"},
            cwd=tmp_path,
        )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "every critique failed" in out.stderr and "failed 2" in out.stdout


def test_missing_api_key_fails_before_training(tmp_path):
    out = run_cli(
        "run",
        QUICKSTART,
        *overrides(tmp_path, "http://127.0.0.1:9/v1", "d"),
        env={"CGRPO_TEST_KEY": ""},
        cwd=tmp_path,
    )
    assert out.returncode == 1
    assert "CGRPO_TEST_KEY is not set" in out.stderr


API_RECIPE = str(REPO / "recipes" / "api-critic-cpu.yaml")
# the fake's usage as a reasoning model: 100 prompt tokens; 64 reasoning + 20 answer tokens,
# at the recipe's prices ($0.15 / $0.60 per million)
PER_CRITIQUE = (100 * 0.15 + 84 * 0.60) / 1e6


def reasoning_model(tmp_path, server, *extra):
    """The shipped API-critic recipe with ``model: gpt-5-mini`` and nothing else changed
    but where the endpoint and the cache are."""
    return [
        API_RECIPE,
        "critic.options.model=gpt-5-mini",
        f"critic.options.base_url={server.base_url}",
        f"critic.options.cache_dir={tmp_path / 'cache'}",
        *extra,
    ]


def test_critique_with_a_reasoning_model_shows_each_failure_reason(tmp_path):
    with FakeOpenAI(kind="openai-reasoning") as server:
        server.script.extend(["ok", "whitespace", "length", "think_only", "refusal", "ok"])
        out = run_cli(
            "critique", *reasoning_model(tmp_path, server), "-n", "6",
            env={"OPENAI_API_KEY": "k", "COLUMNS": "80"}, cwd=tmp_path,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert len(server.requests) == 8  # 2 refused while learning the shape, then 6
    # each change of the request shape is said once
    assert out.stderr.count("refused max_tokens") == 1
    assert out.stderr.count("only its default temperature") == 1
    assert "failed 4" in out.stdout
    reasons = next(line for line in out.stdout.splitlines() if line.startswith("failed by"))
    for kind in ("empty 1", "truncated 1", "thinking_only 1", "refusal 1"):
        assert kind in reasons
    assert out.stdout.count("fallback (") == 4 and out.stdout.count("Conclusion: incorrect") == 2
    # all six billed: 6 x 100 prompt tokens; 5 x 84 completion tokens and the cut reply's
    # whole limit of 256 (the recipe's max_tokens): 90e-6 + 676 x 0.60e-6 = $0.000496
    assert "cost_usd 0.000496" in out.stdout
    assert "reasoning_tokens 384" in out.stdout  # 6 x 64


def test_a_short_run_with_a_reasoning_model_critic(tmp_path):
    """``cgrpo run`` of the shipped recipe with ``model: gpt-5-mini`` trains on its
    critiques, with the cost counted at the recipe's prices (reasoning tokens included)."""
    overrides = [
        "sft.steps=5", "train.steps=1", "data.task.options.size=30",
        "algorithm.prompts_per_step=2", "algorithm.micro_batch_size=16", "algorithm.refine=all",
        "run.console=plain", f"model.path={tmp_path / 'tiny'}",
        f"run.output_dir={tmp_path / 'runs'}", "run.name=r",
    ]  # fmt: skip
    with FakeOpenAI(kind="openai-reasoning") as server:
        out = run_cli(
            "run", *reasoning_model(tmp_path, server, *overrides),
            env={"OPENAI_API_KEY": "k"}, cwd=tmp_path,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    [m] = metrics(tmp_path, "r")
    assert m["critique/requested"] == 14 and m["critique/fallbacks"] == 0
    paid = m["critique/requested"] - m["critique/cached"]
    assert m["critique/cost_total"] == pytest.approx(paid * PER_CRITIQUE)
    assert m["critique/reasoning_tokens_total"] == 64 * paid
    samples = (tmp_path / "runs" / "r" / "samples.jsonl").read_text().splitlines()
    critiques = {json.loads(s)["critique"] for s in samples} - {None}
    assert critiques == {"Step 2 is wrong.\nConclusion: incorrect"}
