#!/usr/bin/env bash
# Download (on a machine with internet access) the wheels that tests/gpu/run.sh installs on a
# GPU machine which has torch, transformers, peft, pluggy, rich and PyYAML but none of cgrpo's
# other dependencies and no package index. Versions are those of this checkout's dev venv
# (.venv) when there is one, so the GPU run uses what the CPU tests used. Wheels go to .whl/
# (git-ignored through .git/info/exclude); about 7 MB for CPython 3.12 on x86-64 Linux.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
PACKAGES="omegaconf antlr4-python3-runtime pydantic pydantic_core annotated-types
  typing-inspection typing_extensions openai jiter httpx2 httpcore2 truststore anyio idna sniffio
  math-verify latex2sympy2_extended"
for p in $PACKAGES; do
    spec=$p
    if [ -x .venv/bin/pip ]; then
        v=$(.venv/bin/pip show "$p" 2>/dev/null | awk '/^Version/{print $2}')
        [ -n "$v" ] && spec="$p==$v"
    fi
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "$spec"
done
ls .whl
