"""Test helpers shared by several test modules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fake_distribution(root: Path, dist: str, entry_points: dict[str, str]) -> Path:
    """Make ``root`` an importable location holding a minimal installed distribution whose
    ``cgrpo`` entry points are ``entry_points`` -- real entry-point discovery, no pip."""
    info = root / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[cgrpo]\n{lines}\n")
    return root


def run_cli(
    *args: str,
    paths: list[Path] = (),
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Run the real ``cgrpo`` command line in a fresh interpreter."""
    full_env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    if paths:
        extra = os.pathsep.join(str(p) for p in paths)
        full_env["PYTHONPATH"] = extra + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "cgrpo", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )
