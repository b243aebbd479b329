"""Peak memory of sampling and of one update at Qwen3's vocabulary: old paths vs new.

    python benchmarks/memory.py [--tokens 256,1024] [--phases sample,update] [--chunk 512]
                                [--device cpu|cuda] [--reps 1] [--glibc-default]

The model is created offline with Qwen3's real vocabulary (151,936, untied output layer)
and a tiny body (hidden 256, 2 layers), so the vocabulary-sized tensors dominate exactly
as they do at 8B scale. Nothing is downloaded. Two phases, each at every ``--tokens``:

* (a) sampling 16 sequences x T new tokens with the ``hf`` backend;
* (b) one update (forward, loss with entropy bonus, backward, AdamW) on 8 sequences x T
  response tokens.

Paths: ``old`` is the implementation before mixed precision and lean log-probs landed
(``generate(output_logits=True)`` with every step's logits stacked into (B, T, V); the
update's full (B, T+1, V) logits with log-softmax and entropy over them); ``new`` is
cgrpo's current code (a log-prob recorder in ``generate``; the chunked, checkpointed
projection of :mod:`cgrpo.model.logprobs`).

Every measurement runs in a fresh child process, because a process's peak RSS only ever
grows. On CPU the children run with ``MALLOC_MMAP_THRESHOLD_=131072`` (both paths alike):
with glibc's default, adaptive threshold, the ~10 MB per-step temporaries of sampling at
this vocabulary fragment the heap and RSS keeps growing with T although the live tensors
do not (new path, 16 x 1024 tokens: 3.87 GiB above baseline with the default, 0.42 GiB
pinned). ``--glibc-default`` measures with the default instead.

Printed per row: peak RSS (CPU) or peak allocated (CUDA), the same above the child's
baseline after loading the model and building the batch, and seconds. The old path is not
run where its logits alone would not fit in the available memory; the row
then gives that estimate instead. Run it alone: other processes distort RSS and time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB = 151_936
SAMPLE_BATCH, UPDATE_BATCH = 16, 8
GIB = 2**30


def create_model(path: Path) -> Path:
    """A Qwen3-vocabulary model with a tiny body, written once to ``path``."""
    if (path / "config.json").exists():
        return path
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from cgrpo.model.tiny import build_tokenizer

    tok = build_tokenizer()  # 384 tokens; ids beyond it decode to nothing
    config = Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        intermediate_size=512,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def current_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def old_sample(model, tok, prompts, tokens: int, precision) -> None:
    """The sampler before lean log-probs: every step's logits kept, then stacked."""
    import torch

    from cgrpo.builtins.policies.hf import left_pad

    ids, mask = left_pad(prompts, tok.pad_token_id)
    width = ids.shape[1]
    device = next(model.parameters()).device
    with torch.no_grad(), precision.autocast():
        result = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            pad_token_id=tok.pad_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
    new = result.sequences[:, width:].cpu()
    logits = torch.stack(result.logits, dim=1).float().cpu() / 1.0  # (B, T, V)
    torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1).tolist()


def new_sample(model, tok, prompts, tokens: int, precision) -> None:
    from cgrpo.builtins.policies.hf import HFPolicy
    from cgrpo.interfaces import BuildContext
    from cgrpo.types import SamplingParams

    ctx = BuildContext(model=model, tokenizer=tok, precision=precision)
    policy = HFPolicy(HFPolicy.Options(generation_batch_size=SAMPLE_BATCH), ctx)
    policy.eos_ids = [VOCAB - 1]  # stop only on an id sampled ~1 in 151,936: ~T steps per row
    policy.generate([[*p] for p in prompts], SamplingParams(n=1, max_new_tokens=tokens))


def update_runner(model, tok, tokens: int, precision, path: str, chunk: int):
    import torch

    from cgrpo.algo.loss import LossConfig
    from cgrpo.algo.mixing import TrainRow
    from cgrpo.config.schema import OptimConfig
    from cgrpo.model.logprobs import full_logits_forward
    from cgrpo.train import update as update_module
    from cgrpo.train.update import UpdateSettings, make_optimizer, update_policy

    if path == "old":  # the update's forward before lean log-probs: full logits
        update_module.forward_response = lambda m, b, t, e, c: full_logits_forward(m, b, t, e)
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(UPDATE_BATCH):
        prompt = tok.encode(f"What is {i} + {i}?")
        response = torch.randint(3, VOCAB, (tokens,), generator=g).tolist()
        old = None if i == UPDATE_BATCH - 1 else [-12.0] * tokens
        rows.append(TrainRow(0, prompt, response, old, old is None, 0.0, (-0.5, 0.5)[i % 2]))
    opt, sched = make_optimizer(model, OptimConfig(lr=1e-6), total_updates=1)
    loss = LossConfig(aggregation="token_sum", normalizer=float(tokens), entropy_coef=0.001)
    settings = UpdateSettings(
        1, UPDATE_BATCH, 1.0, loss, 1.0, logprob_chunk_tokens=chunk, precision=precision
    )
    return lambda: update_policy(model, opt, sched, rows, settings, tok.pad_token_id)


def child(args) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cgrpo.model.precision import Precision

    torch.set_num_threads(1)
    device = torch.device(args.device)
    precision = Precision.from_recipe("bfloat16" if device.type == "cuda" else "float32", device)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(device)
    prompts = [tok.encode(f"What is {i} + {2 * i}?") for i in range(SAMPLE_BATCH)]
    if args.phase == "sample":
        fn = old_sample if args.path == "old" else new_sample

        def run():
            return fn(model, tok, prompts, args.child_tokens, precision)
    else:
        run = update_runner(model, tok, args.child_tokens, precision, args.path, args.chunk)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = current_rss()
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = peak_rss()
    print(json.dumps({"peak": peak, "base": base, "seconds": seconds}))


def old_estimate(phase: str, tokens: int) -> int:
    """Bytes of the old path's vocabulary-sized float32 copies alone (a lower bound): in
    sampling at least three are alive at once (every step's logits, the stacked copy or its
    /T, the log-softmax); the update keeps logits, /T, log-softmax, softmax and
    probs x logits."""
    if phase == "sample":
        return 3 * SAMPLE_BATCH * tokens * VOCAB * 4
    return 5 * UPDATE_BATCH * (tokens + 1) * VOCAB * 4


def available_bytes(device: str) -> int:
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info()
        return free
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(args, phase: str, path: str, tokens: int) -> dict | None:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--model",
        str(args.model),
        "--phase",
        phase,
        "--path",
        path,
        "--child-tokens",
        str(tokens),
        "--device",
        args.device,
        "--chunk",
        str(args.chunk),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not args.glibc_default:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from cgrpo.model.logprobs import DEFAULT_CHUNK_TOKENS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", default="256,1024", help="comma-separated T values")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--chunk", type=int, default=DEFAULT_CHUNK_TOKENS, help="logprob_chunk_tokens (new path)"
    )
    parser.add_argument("--phases", default="sample,update", help="sample, update or both")
    parser.add_argument(
        "--glibc-default", action="store_true", help="keep glibc's adaptive mmap threshold"
    )
    parser.add_argument("--reps", type=int, default=1, help="repetitions per cell (median)")
    parser.add_argument("--model", type=Path, default=None, help="model dir (created if empty)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--child-tokens", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.model is None:
        args.model = Path(tempfile.gettempdir()) / "cgrpo-qwen3-vocab-tiny"
    create_model(args.model)
    unit = "peak allocated" if args.device.startswith("cuda") else "peak RSS"
    print(f"model: Qwen3 vocabulary {VOCAB}, hidden 256, 2 layers, untied; device {args.device}")
    print(
        f"(a) sampling {SAMPLE_BATCH} x T tokens; (b) one update on {UPDATE_BATCH} x T tokens "
        f"(new path: logprob_chunk_tokens {args.chunk})"
    )
    print(f"{'phase':<10} {'T':>5} {'path':<4} {unit + ' GiB':>16} {'above base GiB':>15} {'s':>7}")
    for tokens in [int(t) for t in args.tokens.split(",")]:
        for phase in args.phases.split(","):
            above = {}
            for path in ("old", "new"):
                need = old_estimate(phase, tokens) if path == "old" else 0
                if need > 0.8 * available_bytes(args.device):
                    print(
                        f"{phase:<10} {tokens:>5} {path:<4} not run: its logits alone need "
                        f">= {need / GIB:.1f} GiB, {available_bytes(args.device) / GIB:.1f} "
                        "GiB available"
                    )
                    continue
                runs = [measure(args, phase, path, tokens) for _ in range(args.reps)]
                runs = sorted((r for r in runs if r), key=lambda r: r["peak"])
                if not runs:
                    print(f"{phase:<10} {tokens:>5} {path:<4} failed (see stderr)")
                    continue
                r = runs[len(runs) // 2]
                above[path] = r["peak"] - r["base"]
                print(
                    f"{phase:<10} {tokens:>5} {path:<4} {r['peak'] / GIB:>16.2f} "
                    f"{above[path] / GIB:>15.2f} {r['seconds']:>7.1f}"
                )
            if len(above) == 2:
                print(f"{'':<10} {'':>5} new/old above base: {above['new'] / above['old']:.3f}")


if __name__ == "__main__":
    main()
