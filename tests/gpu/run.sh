#!/usr/bin/env bash
# The CUDA checks of cgrpo as one script (a few minutes on one H100/H200), for a GPU machine
# borrowed for a short time. Prints every measurement (-s) and ends with pytest's summary.
#
# The machine needs torch with CUDA and transformers. Packages it lacks (cgrpo's other
# dependencies: pydantic, omegaconf, openai, math-verify, ...) can be carried as wheels in
# ./.whl (tests/gpu/fetch_wheels.sh downloads them on a machine with internet access); they
# are installed into /tmp/site first. cgrpo itself runs from src/ without installation.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:$PWD:${PYTHONPATH:-}"
python3 - <<'PY'
import torch, transformers
print("torch", torch.__version__, "transformers", transformers.__version__)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA")
try:
    import vllm
    print("vllm", vllm.__version__)
except ImportError:
    print("vllm: not installed here; tests/vllm (sleep/wake on GPU) skipped")
PY
# issue 27's throughput check first (MFU padded / packed, hf decode tokens/s, bf16 packed =
# padded gradients; a few minutes), then the rest
status=0
python3 tests/gpu/throughput.py --json "${OUT:-/tmp}/throughput.json" || status=$?
# the vLLM tests run on the GPU too where vLLM is installed (its wheel, ~400 MB, is too big
# to carry to a borrowed machine; they are skipped otherwise)
# only what needs the GPU (the CPU bf16 test of tests/gpu runs in CI anyway)
python3 -m pytest -q -s -p no:cacheprovider -m "gpu or vllm" tests/gpu tests/vllm || status=$?
exit $status
