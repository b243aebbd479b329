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
