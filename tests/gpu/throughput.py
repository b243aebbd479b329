"""Issue 27's GPU check in one script: update MFU padded and packed at the Qwen3-1.7B shape,
hf decode tokens/s at 1.7B and batch 64, packed = padded gradients in bf16. Meant to take
under 8 minutes on one H100/H200 (an estimate: it has not run on a GPU yet; compiling the
decode step should be most of it). Each stage prints its numbers (and rewrites --json) as
it ends, with the seconds since the start, then a short summary; a stage that runs out of
GPU memory is reported as such and the next stages still run.

    python tests/gpu/throughput.py [--json FILE]   # on a GPU machine (bash tests/gpu/run.sh)
    python tests/gpu/throughput.py --dry-run       # CPU: a tiny shape through the same steps

Models are built in code with random weights (benchmarks/mfu.py); nothing is installed or
downloaded. Steps:

1. which variable-length attention kernel packing uses here, and whether a decode step's
   draw syncs with the host (``torch.cuda.set_sync_debug_mode("error")`` around it);
2. gradients: one update's loss and gradients, padded against packed, on rows of 1 to 700
   response tokens, in float32 (must agree to 1e-4 relative) and bf16 autocast (2e-2);
3. update MFU (bf16 over float32 masters, AdamW): 8 rows x (64 + 1024) tokens in one
   micro-batch, padded and packed (the shape of the first GPU measurement, 22.6% padded);
   then 32 rows of log-normal lengths (median 128, longest 1024), padded micro-batches of
   8 rows against packed ones of 8,704 tokens: real tokens/s of each;
4. hf decode: 64 sequences x 256 new tokens, compiled (CUDA graphs) and eager, new tokens/s,
   and the compiled decode's log-probs against the trainer's recompute.

Exit status 1 when a correctness check fails (2, 4's log-probs); the throughput targets
(MFU >= 40%, decode >= 4,000 tokens/s) are reported, not enforced.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "src"), str(REPO / "benchmarks")]

import mfu  # noqa: E402
import torch  # noqa: E402

# (shape, vocab, update rows x response, log-normal rows / median, decode rows x tokens)
FULL = dict(shape="qwen3-1.7b", vocab=mfu.VOCAB, uniform=(8, 1024), lognormal=(32, 128),
            budget=8704, decode=(64, 256), ragged=(1, 37, 700, 120), device="cuda")  # fmt: skip
DRY = dict(shape="tiny", vocab=1024, uniform=(4, 48), lognormal=(16, 12),
           budget=4 * (64 + 96), decode=(4, 8), ragged=(1, 5, 40, 9), device="cpu")  # fmt: skip


def kernel_and_syncs(device: str) -> dict:
    """The packed attention kernel chosen for bf16, and a CUDA draw under sync checking."""
    from cgrpo.builtins.policies.seeded_sampling import row_seeds
    from cgrpo.builtins.policies.token_draw import TokenDraw
    from cgrpo.model.packing import varlen_kernel

    dev = torch.device(device)
    kernel = varlen_kernel(dev, torch.bfloat16)
    out = {"varlen_kernel": kernel[0] if kernel else "segments (one SDPA per segment)"}
    if device == "cuda":
        logits = torch.randn(64, mfu.VOCAB, device=dev)
        draw = TokenDraw(0.9, 0.95, 0, seeds=row_seeds(range(64), 1).to(dev))
        torch.cuda.set_sync_debug_mode("error")
        try:
            draw(logits, step=3)
            out["draw_syncs"] = "none"
        except RuntimeError as exc:
            out["draw_syncs"] = f"syncs: {exc}"
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return out


def gradients(model, cfg: dict) -> dict:
    """Relative difference of loss and gradient (L2 over all parameters), padded vs
    packed, float32 and bf16."""
    from dataclasses import replace

    from packing import GradRecorder

    from cgrpo.model.precision import FULL as FLOAT32
    from cgrpo.train.update import update_policy

    rows = []
    for n in cfg["ragged"]:
        rows += mfu.update_rows(2, n, prompt=24, vocab=cfg["vocab"])
    out = {}
    for name in ("float32", "bfloat16"):
        got = []
        for packed in (False, True):
            settings = mfu.update_settings(rows, packed, cfg["device"])
            settings = settings if name == "bfloat16" else replace(settings, precision=FLOAT32)
            rec = GradRecorder(model)
            loss = update_policy(model, rec, None, rows, settings, pad_id=0)["loss/total"]
            got.append((loss, torch.cat([g.flatten() for g in rec.grads])))
            del rec
        (la, ga), (lb, gb) = got
        out[name] = dict(
            loss_rel=abs(la - lb) / max(abs(la), 1e-12),
            grad_rel=float((ga - gb).norm() / ga.norm().clamp(min=1e-30)),
        )
    return out


def updates(model, cfg: dict, peak: float | None) -> list[dict]:
    """Seconds, real tokens/s and MFU of the four update configurations."""
    from dataclasses import replace

    n, length = cfg["uniform"]
    uniform = mfu.update_rows(n, length, vocab=cfg["vocab"])
    m, median = cfg["lognormal"]
    lognormal = mfu.update_rows(m, 4 * median, kind="lognormal", vocab=cfg["vocab"])
    runs = []
    for label, rows in (("uniform", uniform), ("lognormal", lognormal)):
        flops = mfu.model_flops(model, rows)
        tokens = sum(len(r.prompt_ids) + len(r.response_ids) for r in rows)
        for packed in (False, True):
            settings = mfu.update_settings(rows, packed, cfg["device"])
            if label == "lognormal":  # padded: 8 rows per micro-batch; packed: the budget
                micro = dict(micro_batch_size=8, micro_batch_tokens=None)
                settings = replace(settings, **(dict(micro_batch_tokens=cfg["budget"])
                                                if packed else micro))  # fmt: skip
            seconds = statistics.median(mfu.time_updates(model, rows, 3, False, settings))
            runs.append(dict(
                rows=label, layout="packed" if packed else "padded", seconds=seconds,
                tokens_per_s=tokens / seconds, tflops=flops / seconds / 1e12,
                mfu=flops / seconds / peak if peak else None,
            ))  # fmt: skip
    return runs


def decoding(model, cfg: dict) -> dict:
    """New tokens/s of the hf backend, compiled (CUDA) and eager, and the largest
    |sampler log-prob - trainer recompute| over 8 sequences of the first of them."""
    rows, tokens = cfg["decode"]
    out: dict = {}
    for decode in ("compiled", "eager") if cfg["device"] == "cuda" else ("eager",):
        started = time.perf_counter()
        rate, prompts, done = mfu.time_sampling(model, rows, tokens, decode=decode)
        out[f"{decode}_tokens_per_s"] = rate
        out[f"{decode}_seconds_with_warmup"] = time.perf_counter() - started
        if "logprob_diff_max" not in out:
            out["logprob_diff_max"] = sampler_vs_trainer(model, prompts[:8], done[:8], cfg)
    return out


def sampler_vs_trainer(model, prompts, done, cfg: dict) -> float:
    from cgrpo.algo.mixing import TrainRow, collate
    from cgrpo.model.logprobs import forward_response
    from cgrpo.model.precision import Precision

    rows = [TrainRow(0, prompts[i], c.token_ids, c.logprobs, False, 0.0)
            for i, g in enumerate(done) for c in g]  # fmt: skip
    batch = collate(rows, 0)
    with torch.no_grad(), Precision.from_recipe("bfloat16", cfg["device"]).autocast():
        lp, _ = forward_response(model, batch, 1.0)
    return float(((lp.cpu() - batch.old_logprobs).abs() * batch.response_mask).max())


def summary(found: dict, peak: float | None) -> tuple[list[str], bool]:
    g, d = found["gradients"], found["decode"]
    ok = (g["float32"]["grad_rel"] < 1e-4 and g["float32"]["loss_rel"] < 1e-4
          and g["bfloat16"]["grad_rel"] < 2e-2 and g["bfloat16"]["loss_rel"] < 2e-2
          and d["logprob_diff_max"] < 0.25)  # fmt: skip
    lines = [
        f"device {found['device']}, torch {torch.__version__}, shape {found['shape']}; "
        f"packed attention: {found['kernel']['varlen_kernel']}; "
        f"draw syncs: {found['kernel'].get('draw_syncs', 'not checked (CPU)')}",
        "packed vs padded, relative difference (loss, gradient): float32 "
        f"{g['float32']['loss_rel']:.1e}, {g['float32']['grad_rel']:.1e}; bf16 "
        f"{g['bfloat16']['loss_rel']:.1e}, {g['bfloat16']['grad_rel']:.1e}",
    ]
    for r in found["updates"]:
        mfu_text = f", MFU {r['mfu']:.1%}" if r["mfu"] is not None else ""
        lines.append(f"update {r['rows']:9s} {r['layout']:6s}: {r['seconds']:.3f} s, "
                     f"{r['tokens_per_s']:,.0f} tokens/s, {r['tflops']:.3g} TFLOP/s"
                     + mfu_text)  # fmt: skip
    rates = ", ".join(f"{k.split('_')[0]} {v:,.0f}" for k, v in d.items() if "per_s" in k)
    lines.append(f"hf decode tokens/s: {rates}; sampler vs trainer log-prob max "
                 f"{d['logprob_diff_max']:.3f}")  # fmt: skip
    if peak:
        best = max(r["mfu"] for r in found["updates"] if r["rows"] == "uniform")
        fastest = max(v for k, v in d.items() if "per_s" in k)
        lines.append(f"targets: update MFU >= 40%: {'met' if best >= 0.4 else 'NOT met'} "
                     f"({best:.1%}); decode >= 4,000 tokens/s: "
                     f"{'met' if fastest >= 4000 else 'NOT met'} ({fastest:,.0f})")  # fmt: skip
    lines.append(f"correctness checks: {'pass' if ok else 'FAIL'}")
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, a tiny shape")
    p.add_argument("--json", help="write every number here")
    args = p.parse_args(argv)
    cfg = DRY if args.dry_run else FULL
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA here: run with --dry-run")
    name = torch.cuda.get_device_name(0) if cfg["device"] == "cuda" else "cpu"
    peak = mfu.chip_peak(name, None) if cfg["device"] == "cuda" else None
    started = time.perf_counter()
    model = mfu.build(cfg["shape"], cfg["device"], vocab=cfg["vocab"])
    found: dict = dict(device=name, shape=cfg["shape"], seconds={})
    stages = (("kernel", lambda: kernel_and_syncs(cfg["device"])),
              ("gradients", lambda: gradients(model, cfg)),
              ("updates", lambda: updates(model, cfg, peak)),
              ("decode", lambda: decoding(model, cfg)))  # fmt: skip
    for stage, run in stages:  # each stage's numbers are printed and saved as they come,
        try:  # so a run stopped by a time limit still reports its part
            found[stage] = run()
        except torch.OutOfMemoryError as exc:  # the next stages may still fit
            found[stage] = {"error": f"out of memory: {str(exc)[:300]}"}
            torch.cuda.empty_cache()
        found["seconds"][stage] = round(time.perf_counter() - started, 1)
        print(f"[{found['seconds'][stage]:7.1f} s] {stage}: {json.dumps(found[stage])}",
              flush=True)  # fmt: skip
        if args.json:
            Path(args.json).write_text(json.dumps(found, indent=1) + "\n")
    failed = [stage for stage, _ in stages if "error" in found[stage]]
    if failed:
        print(f"== throughput (issue 27): out of memory in {', '.join(failed)}", flush=True)
        return 1
    lines, ok = summary(found, peak)
    print("\n".join(["== throughput (issue 27)", *lines]), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
