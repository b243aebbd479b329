"""A cgrpo GRPO step beside TRL's GRPOTrainer step on the same tiny model.

    nox -s trl_bench                      # installs TRL in its own venv, then runs this
    python benchmarks/trl_side_by_side.py [--reps 3] [--steps 4] [--threads 1]

TRL is never a dependency of cgrpo: the ``trl_bench`` nox session installs it beside the
project in a throwaway venv. Both sides get the same offline tiny Qwen2 model (hidden 128,
2 layers, the one ``step_time.py`` uses), the same arithmetic prompts (cgrpo's prompt ids,
decoded to text for TRL), the same shapes (8 prompts x 8 samples, 32 new tokens, one
micro-batch), temperature 1.0, AdamW at lr 1e-5, no KL term, the same reward (cgrpo's
``math`` verifier) and the same torch thread count. Two warm-up steps each, then
``--steps`` timed steps: the process CPU-seconds of each step (what the issue's target is
stated in) and its wall seconds.

This machine is shared and its load drifts by tens of percent within minutes, so by
default both trainers run in one process (``--reps`` of them): TRL trains, and a cgrpo
step runs beside each of its steps, before it on odd steps and after it on even ones; the
ratio is taken pair by pair. ``--separate`` runs each side in its own fresh process
instead, alternating their order between repetitions.

Both sample from the same model at the same temperature, so the expected response length is
the same; the tokens sampled per step are printed so that a difference shows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # step_time.py, its recipe and trainer
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
SEED = 7
# steps each side takes before the timed ones: TRL's second step still cost 1.4-1.8x its
# later ones here (1.00 s against 0.54-0.74 s), cgrpo's did not; both sides skip as many
WARMUP = 2


def _step_time_args(args) -> argparse.Namespace:
    """The arguments benchmarks/step_time.py's recipe and trainer helpers read."""
    return argparse.Namespace(
        samples=args.samples, prompts=args.prompts, new_tokens=args.new_tokens,
        steps=args.steps, device="cpu", world=1, reproducible=False,
    )  # fmt: skip


def _recipe(args):
    from step_time import recipe_for

    return recipe_for(
        Path(args.model_dir), Path(args.tmp) / "cgrpo", "grpo", _step_time_args(args), 0,
        warmup=WARMUP,
    )  # fmt: skip


def _cgrpo_prompts(args):
    """(prompt ids, problem) in the order cgrpo's trainer draws them, its template."""
    from cgrpo.app.build import build
    from cgrpo.plugins import get_registries
    from cgrpo.train.data import DataStream

    recipe = _recipe(args)
    built = build(recipe, get_registries(), None)
    stream = DataStream(built.problems, seed=recipe.run.seed, shuffle=recipe.data.shuffle)
    problems = stream.next_batch(args.prompts * (args.steps + WARMUP))
    return built.tokenizer, [(built.prompts.prompt_ids(p), p) for p in problems]


def _cgrpo_trainer(args):
    """cgrpo's trainer for the recipe, after its warm-up steps."""
    from step_time import make_trainer

    out = Path(args.tmp) / "cgrpo"
    ns = _step_time_args(args)
    return make_trainer("grpo", 0, Path(args.model_dir), out, ns, warmup=WARMUP)


def _timed_cgrpo_step(trainer, step: int, args, timings: dict) -> None:
    c0, w0 = time.process_time(), time.perf_counter()
    row = trainer.step(step)
    timings["cpu"].append(time.process_time() - c0)
    timings["wall"].append(time.perf_counter() - w0)
    timings["tokens"].append(row["length/initial_mean"] * args.prompts * args.samples)


def cgrpo_worker(args) -> dict:
    trainer = _cgrpo_trainer(args)
    timings: dict[str, list[float]] = {"cpu": [], "wall": [], "tokens": []}
    for s in range(WARMUP + 1, WARMUP + args.steps + 1):
        _timed_cgrpo_step(trainer, s, args, timings)
    return timings


def paired_worker(args) -> dict:
    """Both trainers in this one process, a cgrpo step beside each TRL step: before it on
    odd steps, after it on even ones, so that each pair of steps sees the same machine
    (between processes, the load of this shared machine drifts by tens of percent)."""
    cgrpo = _cgrpo_trainer(args)
    mine: dict[str, list[float]] = {"cpu": [], "wall": [], "tokens": []}

    def beside(step: int, before: bool) -> None:
        if step > WARMUP and (step % 2 == 1) == before:
            _timed_cgrpo_step(cgrpo, step, args, mine)

    theirs = trl_worker(args, beside)
    return {"cgrpo": mine, "trl": theirs}


def trl_worker(args, beside=None) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from cgrpo.interfaces import BuildContext
    from cgrpo.plugins import get_registries

    tok, pairs = _cgrpo_prompts(args)
    by_question = {p.question: p for _, p in pairs}
    data = Dataset.from_list(
        [{"prompt": tok.decode(ids), "question": p.question} for ids, p in pairs]
    )
    verifier = get_registries()["verifier"].build("math", {}, BuildContext())

    def correct(completions, question, **_):
        pairs = zip(completions, question, strict=True)
        return [verifier.verify(c, by_question[q]).score for c, q in pairs]

    timings = {"cpu": [], "wall": [], "tokens": []}

    class Clock(TrainerCallback):
        def on_step_begin(self, _args, state, *a, **k):
            if beside is not None:
                beside(state.global_step + 1, before=True)
            self.c0, self.w0 = time.process_time(), time.perf_counter()

        def on_step_end(self, _args, state, *a, **k):
            timings["cpu"].append(time.process_time() - self.c0)
            timings["wall"].append(time.perf_counter() - self.w0)
            if beside is not None:
                beside(state.global_step, before=False)

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "completions/mean_length" in logs:
                timings["tokens"].append(
                    logs["completions/mean_length"] * args.prompts * args.samples
                )

    config = GRPOConfig(
        output_dir=str(Path(args.tmp) / "trl"),
        per_device_train_batch_size=args.prompts * args.samples,
        num_generations=args.samples,
        max_completion_length=args.new_tokens,
        temperature=1.0,
        learning_rate=1e-5,
        beta=0.0,
        max_steps=WARMUP + args.steps,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=SEED,
        shuffle_dataset=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    model = AutoModelForCausalLM.from_pretrained(args.model_dir)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=correct,
        args=config,
        train_dataset=data,
        processing_class=tok,
        callbacks=[Clock()],
    )
    trainer.train()
    return {k: v[WARMUP:] for k, v in timings.items()}


def run_side(side: str, model_dir: Path, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, __file__, "--worker", side, "--model-dir", str(model_dir),
            "--tmp", tmp, "--steps", str(args.steps), "--prompts", str(args.prompts),
            "--samples", str(args.samples), "--new-tokens", str(args.new_tokens),
            "--threads", str(args.threads),
        ]  # fmt: skip
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            sys.exit(f"{side} worker failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def paired(model_dir: Path, args) -> None:
    """``--reps`` processes of ``paired_worker``: the CPU-seconds ratio of each pair of
    steps, the median of each process and of all pairs."""
    every = []
    for rep in range(args.reps):
        got = run_side("paired", model_dir, args)
        pairs = list(zip(got["cgrpo"]["cpu"], got["trl"]["cpu"], strict=True))
        ratios = [c / t for c, t in pairs]
        every += ratios
        print(
            f"rep {rep + 1}  cgrpo CPU {statistics.median(c for c, _ in pairs):.3f} s/step, "
            f"{statistics.median(got['cgrpo']['tokens']):.0f} tokens/step  TRL CPU "
            f"{statistics.median(t for _, t in pairs):.3f} s/step, "
            f"{statistics.median(got['trl']['tokens']):.0f} tokens/step  cgrpo/TRL "
            f"{statistics.median(ratios):.2f}x"
        )
    print(
        f"cgrpo/TRL CPU-seconds per GRPO step: median {statistics.median(every):.2f}x (min "
        f"{min(every):.2f}x, max {max(every):.2f}x, {len(every)} pairs of steps in "
        f"{args.reps} processes)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--separate",
        action="store_true",
        help="each side in its own process, alternating (default: both in one process, "
        "a cgrpo step beside each TRL step)",
    )
    p.add_argument("--worker", choices=["cgrpo", "trl", "paired"], help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        torch.manual_seed(SEED)
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        work = {"cgrpo": cgrpo_worker, "trl": trl_worker, "paired": paired_worker}
        print(json.dumps(work[args.worker](args)))
        return

    from cgrpo.model.tiny import create_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = create_tiny_model(Path(tmp) / "model")
        print(
            f"GRPO step, {args.prompts} prompts x {args.samples} samples, {args.new_tokens} "
            f"new tokens, {args.threads} torch thread(s), {args.steps} timed steps per run"
        )
        if not args.separate:
            paired(model_dir, args)
            return
        ratios = []
        for rep in range(args.reps):
            order = ("cgrpo", "trl") if rep % 2 == 0 else ("trl", "cgrpo")
            got = {side: run_side(side, model_dir, args) for side in order}
            med = {s: {k: statistics.median(v) for k, v in got[s].items() if v} for s in got}
            ratio = med["cgrpo"]["cpu"] / med["trl"]["cpu"]
            ratios.append(ratio)
            for side in ("cgrpo", "trl"):
                m = med[side]
                print(
                    f"rep {rep + 1} {side:5s}  CPU {m['cpu']:.3f} s/step  wall "
                    f"{m['wall']:.3f} s/step  {m.get('tokens', float('nan')):.0f} tokens/step"
                )
            print(f"rep {rep + 1} cgrpo/TRL CPU-seconds {ratio:.2f}x")
        print(
            f"cgrpo/TRL CPU-seconds per GRPO step: median {statistics.median(ratios):.2f}x "
            f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x, {len(ratios)} alternating reps)"
        )


if __name__ == "__main__":
    main()
