"""The ``vllm-server`` backend's parts that need no vLLM: the request and answer formats
(answers written as vLLM 0.32's /inference/v1/generate returns them), weight-version
labels, the server pool's failure handling (against the local HTTP server of
tests/fake_openai.py and a port nothing listens on), the weight files, the server command
line and the recipe checks. The backend against real servers: tests/vllm."""

from __future__ import annotations

import asyncio
import socket

import pytest
import torch

from cgrpo.builtins.policies.server_launch import server_command
from cgrpo.builtins.policies.server_pool import Server, ServerFailed, ServerPool
from cgrpo.builtins.policies.server_protocol import (
    choice_versions,
    completions,
    sampling_body,
    tag_count,
    version_tag,
)
from cgrpo.builtins.policies.server_weights import write_safetensors
from cgrpo.config.schema import LocalServers, VLLMServerOptions
from cgrpo.config.validate import validate_recipe
from cgrpo.errors import RecipeError, TrainingError
from cgrpo.types import SamplingParams
from tests.fake_openai import FakeOpenAI

EOS = 2


def choice(index, ids, lps, finish="length", versions=("n0:3",)):
    return {
        "index": index,
        "finish_reason": finish,
        "token_ids": ids,
        "weight_versions": [{"version": v, "start": 0, "end": len(ids)} for v in versions],
        "logprobs": {
            "content": [{"token_id": t, "logprob": lp} for t, lp in zip(ids, lps, strict=True)]
        },
    }


def test_sampling_body_greedy_seedless_and_filtered():
    body = sampling_body([5, 6], SamplingParams(n=3, temperature=0.7, top_k=20), 9, [EOS])
    sp = body["sampling_params"]
    assert body["token_ids"] == [5, 6]
    assert (sp["n"], sp["temperature"], sp["top_k"], sp["seed"]) == (3, 0.7, 20, 9)
    assert (sp["logprobs"], sp["stop_token_ids"], sp["detokenize"]) == (0, [EOS], False)
    greedy = sampling_body([5], SamplingParams(greedy=True, top_p=0.5), None, [])
    sp = greedy["sampling_params"]
    assert (sp["temperature"], sp["top_p"], sp["top_k"]) == (0.0, 1.0, 0)
    assert "seed" not in sp  # the server draws one


def test_completions_cut_at_eos_keep_its_logprob_and_come_in_index_order():
    answer = {
        "choices": [
            choice(1, [7, 8, 9], [-0.1, -0.2, -0.3]),
            # stopped on EOS: the EOS is kept with its log-prob, nothing after it
            choice(0, [3, EOS], [-1.0, -0.5], finish="stop"),
        ]
    }
    out = completions(answer, [EOS], lambda ids: "|".join(map(str, ids)), version=3)
    assert [c.token_ids for c in out] == [[3, EOS], [7, 8, 9]]
    assert [list(c.logprobs) for c in out] == [[-1.0, -0.5], [-0.1, -0.2, -0.3]]
    assert [c.finish_reason for c in out] == ["stop", "length"]
    assert [c.text for c in out] == [f"3|{EOS}", "7|8|9"]
    assert {c.weight_version for c in out} == {3}


def test_an_answer_without_logprobs_is_an_error():
    bad = choice(0, [3, 4], [-1.0, -1.0])
    bad["logprobs"] = None
    with pytest.raises(TrainingError, match="log-probs"):
        completions({"choices": [bad]}, [EOS], str, version=1)


def test_weight_version_labels_belong_to_one_trainer():
    assert version_tag("ab12", 7) == "ab12:7"
    assert tag_count("ab12:7", "ab12") == 7
    assert tag_count("ffff:7", "ab12") is None  # another trainer's weights
    assert tag_count("default", "ab12") is None  # a server restarted from disk
    assert tag_count(None, "ab12") is None
    assert choice_versions(choice(0, [1], [0.0], versions=("a:1", "a:2"))) == ["a:1", "a:2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pool_sends_a_refused_request_to_the_other_server_and_stops_on_a_rejection():
    with FakeOpenAI(hang_s=2.0) as fake:
        dead = f"http://127.0.0.1:{free_port()}"
        live = fake.base_url.removesuffix("/v1")
        pool = ServerPool([dead, live], request_timeout=0.5, max_inflight=4)

        async def scenario():
            try:
                send = lambda s: pool.call(s, "POST", "/v1/chat/completions", json={})  # noqa: E731
                answer = await pool.on_any(send)  # the dead one is first listed: tried first
                assert answer["choices"][0]["finish_reason"] == "stop"
                assert pool.retried == 1 and not pool.servers[0].alive
                assert "ConnectError" in pool.servers[0].error
                fake.script.append("hang")  # slower than request_timeout: a failed server
                with pytest.raises(TrainingError, match="no vLLM server answers"):
                    await pool.on_any(send)
                assert dead in pool.none_answer() and live in pool.none_answer()
                pool.servers[1].alive = True
                fake.script.append("400")  # every server would reject it: the step stops
                with pytest.raises(TrainingError, match="HTTP 400"):
                    await pool.on_any(send)
                fake.script.append("500")
                with pytest.raises(ServerFailed, match="HTTP 500"):
                    await pool.call(pool.servers[1], "POST", "/v1/chat/completions", json={})
            finally:
                await pool.aclose()

        asyncio.run(scenario())


def test_pool_prefers_the_server_with_fewest_requests_in_flight():
    pool = ServerPool(["http://a", "http://b", "http://c"], request_timeout=1, max_inflight=1)
    pool.servers[0].inflight, pool.servers[1].inflight, pool.servers[2].inflight = 2, 0, 1
    assert pool._pick(set()).url == "http://b"
    pool.servers[1].alive = False
    assert pool._pick(set()).url == "http://c"
    assert isinstance(pool.servers[0], Server)


def test_weight_files_are_shards_with_tied_weights_copied(tmp_path):
    from safetensors.torch import load_file

    shared = torch.arange(6.0).reshape(2, 3)
    weights = [("embed.weight", shared), ("lm_head.weight", shared), ("norm.weight", torch.ones(3))]
    target = tmp_path / "v1"
    write_safetensors(iter(weights), target, torch.bfloat16, write=True)
    files = sorted(p.name for p in target.iterdir())
    assert files == ["model-00000.safetensors"] and not (tmp_path / "v1.partial").exists()
    loaded = load_file(str(target / files[0]))
    assert loaded["lm_head.weight"].dtype == torch.bfloat16
    assert torch.equal(loaded["lm_head.weight"].float(), shared)
    drained = []  # a rank that does not write still drains (the FSDP gather is collective)
    write_safetensors(
        (drained.append(n) or (n, t) for n, t in weights),
        tmp_path / "v2",
        torch.float32,
        write=False,
    )
    assert len(drained) == 3 and not (tmp_path / "v2").exists()


def recipe_for(recipe_yaml: dict):
    from cgrpo.plugins import get_registries

    return validate_recipe(recipe_yaml, get_registries())


def test_server_command_on_cpu_and_on_gpu():
    recipe = recipe_for(
        {
            "model": {"path": "org/m", "max_length": 1024, "dtype": "bfloat16"},
            "data": {"task": "arithmetic"},
            "run": {"seed": 3},
        }
    )
    launch = LocalServers(ports=[8001], threads=2, extra_args=["--foo"])
    argv, env = server_command(launch, recipe, 8001, on_gpu=False, nccl=False)
    line = " ".join(argv)
    for part in (
        "-m vllm.entrypoints.openai.api_server",
        "--model org/m",
        "--port 8001",
        "--dtype bfloat16",
        "--seed 3",
        "--max-model-len 1024",
        "--enable-scale-out",
        "--logprobs-mode processed_logprobs",
        "--enforce-eager",
        "--no-enable-chunked-prefill",
        "--kv-cache-memory-bytes",
    ):
        assert part in line, part
    assert argv[-1] == "--foo"
    assert env["VLLM_SERVER_DEV_MODE"] == "1" and env["OMP_NUM_THREADS"] == "2"
    argv, env = server_command(launch, recipe, 8001, on_gpu=True, nccl=True)
    line = " ".join(argv)
    assert "--enforce-eager" not in line and "--gpu-memory-utilization 0.9" in line
    assert '--weight-transfer-config {"backend": "nccl"}' in line


BASE = {"model": {"path": "org/m"}, "data": {"task": "arithmetic"}}


def issues_of(**policy_options):
    with pytest.raises(RecipeError) as info:
        recipe_for(
            {
                **BASE,
                "policy": {"name": "vllm-server", "options": policy_options},
                "model": {"path": "org/m", "device": "cpu"},
            }
        )
    return {i.path: i.message for i in info.value.problems}


def test_recipe_checks_of_the_server_options():
    ok = recipe_for(
        {**BASE, "policy": {"name": "vllm-server", "options": {"urls": ["http://h:8000"]}}}
    )
    assert VLLMServerOptions.model_validate(ok.policy.options).weight_sync == "filesystem"
    assert "exactly one" in issues_of()["policy.options"]
    assert "exactly one" in issues_of(urls=["http://h:1"], launch={"ports": [1]})["policy.options"]
    assert "base URL" in issues_of(urls=["h:8000"])["policy.options.urls"]
    assert "twice" in issues_of(launch={"ports": [1, 1]})["policy.options.launch.ports"]
    found = issues_of(urls=["http://h:1"], weight_sync="nccl", weights_dir="/w")
    assert "GPU" in found["policy.options.weight_sync"]
    assert "filesystem" in found["policy.options.weights_dir"]  # set, and ignored: an error
    found = issues_of(launch={"ports": [1], "max_model_len": 64}, nccl_port=30000)
    assert "less than model.max_length" in found["policy.options.launch.max_model_len"]
    assert "nccl" in found["policy.options.nccl_port"]


def test_the_servers_recipe_samples_off_the_trainer_gpus(tmp_path):
    """recipes/paper-qwen3-8b-servers.yaml: the paper's algorithm with the vllm-server
    backend (the vllm engine's options dropped with its name), and a memory plan with
    nothing for sampling on the trainer's GPUs."""
    from cgrpo.config import load_recipe
    from cgrpo.model import memory_plan
    from tests.helpers import REPO

    data = tmp_path / "train.jsonl"
    data.write_text('{"problem": "1+1?", "answer": "2"}\n')
    ov = ["model.path=org/model", f"data.task.options.path={data}"]
    servers, _ = load_recipe(REPO / "recipes" / "paper-qwen3-8b-servers.yaml", ov)
    paper, _ = load_recipe(REPO / "recipes" / "paper-qwen3-8b.yaml", ov)
    assert servers.policy.name == "vllm-server" and len(servers.policy.options["urls"]) == 4
    assert "gpu_memory_utilization" not in servers.policy.options
    assert servers.algorithm == paper.algorithm and servers.distributed == paper.distributed
    from tests.unit.test_memory_plan import QWEN3_8B

    shape = memory_plan.ModelShape.from_config(QWEN3_8B)
    setup = memory_plan.Setup.from_recipe(servers, gpus=8)
    lines = memory_plan.estimate(shape, setup, 80 * 2**30).lines
    sampling = [line for line in lines if line[0].startswith("sampling")]
    assert sampling == [("sampling: on the vLLM servers, not on this GPU", 0, 0)]


def test_a_launched_server_that_exits_while_starting_is_a_clear_error(tiny, tmp_path):
    """``launch`` wiring without vLLM: the server process is started, exits at once (an
    unknown flag, or no vLLM in this Python), and the first sync says so with the end of
    its log instead of waiting for the startup timeout; close() leaves nothing running."""
    from cgrpo.interfaces import BuildContext
    from cgrpo.plugins import get_registries

    model, tok = tiny
    recipe = recipe_for({"model": {"path": "org/m", "max_length": 1024},
                         "data": {"task": "arithmetic"}})  # fmt: skip
    port = free_port()
    options = {"launch": {"ports": [port], "extra_args": ["--no-such-flag"]}}
    ctx = BuildContext(model=model, tokenizer=tok, recipe=recipe, run_dir=tmp_path)
    backend = get_registries()["policy"].build("vllm-server", options, ctx)
    try:
        assert [s.url for s in backend.pool.servers] == [f"http://127.0.0.1:{port}"]
        with pytest.raises(TrainingError, match=f"port {port} exited with code"):
            backend.sync_weights(model)
        assert (tmp_path / "servers" / f"{port}.log").exists()
    finally:
        backend.close()
    assert backend.local is None
