"""The Critique-GRPO training loop.

One step, numbered like the algorithm (docs/algorithm-options.md):

1-6. rollout: sample G per prompt, verify, critique, refine, select K, mix (rollout.py);
7.   advantages per group (the recipe's advantage scheme);
8-9. update: loss with the refinement mask, mini-/micro-batches, AdamW (update.py);
then the sampler receives the new weights and rank 0 writes metrics and samples.

Departures from the released code, on purpose: refinements are appended (G + K) instead
of overwriting a sample; sampled token ids are used (no re-tokenisation of decoded text);
K <= 0 with refinement on, or K >= N, is a recipe error. Old log-probs are the sampler's
by default (``algorithm.old_logprobs: sampler``): with the hf backend they are the same
numbers a recompute would give, so recomputing them would only cost a forward pass.

Determinism and resume: every step reseeds torch and the fallback RNG from (run.seed,
step, rank), and the data order is a function of (seed, epoch), so a run resumed from a
checkpoint samples exactly what an uninterrupted one would.

Several processes (torchrun): every rank draws the same global batch of P problems and
keeps its slice of P / world_size; gradients are summed across ranks (distributed.py).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import torch

from cgrpo.algo.loss import LossConfig
from cgrpo.algo.mixing import TrainRow
from cgrpo.algo.staleness import logprob_gaps, stale_groups, staleness_summary
from cgrpo.config.schema import Recipe
from cgrpo.errors import TrainingError, VerifierError
from cgrpo.model import distributed
from cgrpo.model.loading import eos_token_ids
from cgrpo.model.logprobs import forward_response
from cgrpo.model.packing import require_packing
from cgrpo.model.prompts import RefinementTooLong
from cgrpo.model.sharding import is_sharded
from cgrpo.train.checkpoint import (
    complete_checkpoints,
    load_sharded_state,
    maybe_crash,
    prune_checkpoints,
    restore_rng,
    save_checkpoint,
    save_sharded_checkpoint,
)
from cgrpo.train.data import NO_DEMONSTRATION_SOLUTIONS, DataStream
from cgrpo.train.evaluation import evaluate_now
from cgrpo.train.fine_tune import critique_target, fine_tune_loss, fine_tune_rows
from cgrpo.train.metrics import Console, JsonlWriter, rollout_metrics, sample_lines
from cgrpo.train.parts import Built
from cgrpo.train.pipeline import Pipeline, check_pipeline, count_outcomes, drop_groups
from cgrpo.train.rollout import Rollout, RolloutSettings, rollout, rollout_async
from cgrpo.train.rollout_context import check_speculation
from cgrpo.train.timeline import shift
from cgrpo.train.update import (
    UpdateSettings,
    make_optimizer,
    micro_batches,
    padding_to_match_ranks,
    update_policy,
)
from cgrpo.train.verify_pool import VerifyPool, auto_workers
from cgrpo.types import SamplingParams


def loss_config(recipe: Recipe) -> LossConfig:
    loss = recipe.algorithm.loss
    low, high = loss.clip.bounds()
    normalizer = recipe.sampling.max_new_tokens if loss.normalizer == "auto" else loss.normalizer
    return LossConfig(
        clip_low=low,
        clip_high=high,
        shaping=loss.shaping.mode,
        shaping_gamma=loss.shaping.gamma,
        aggregation=loss.aggregation,
        normalizer=float(normalizer),
        entropy_coef=loss.entropy_coef,
        entropy_aggregation=loss.entropy_aggregation,
        kl_coef=loss.kl_coef,
        kl_estimator=loss.kl_estimator,
        kl_aggregation=loss.kl_aggregation,
        tis_cap=loss.tis_cap,
        demonstration_gamma=recipe.algorithm.demonstrations.gamma,
    )


def merge_rollouts(parts: list[Rollout]) -> Rollout:
    """One Rollout from every rank's (group ids and row indices made global)."""
    if len(parts) == 1:
        return parts[0]
    merged = Rollout(rows=[], records=[], seconds={}, critiques=[])
    group_offset = 0
    for part in parts:
        row_offset, record_offset = len(merged.rows), len(merged.records)
        for row in part.rows:
            row.group += group_offset
        for rec in part.records:
            rec.group += group_offset
            rec.row = None if rec.row is None else rec.row + row_offset
            rec.parent = None if rec.parent is None else rec.parent + record_offset
        merged.rows += part.rows
        merged.records += part.records
        merged.critiques += part.critiques
        merged.groups_all_failed += part.groups_all_failed
        merged.groups_rescued += part.groups_rescued
        merged.refinements_skipped += part.refinements_skipped
        for stage, secs in part.seconds.items():  # ranks run in parallel: the slowest counts
            merged.seconds[stage] = max(merged.seconds.get(stage, 0.0), secs)
        for key, value in part.speculative.items():
            merged.speculative[key] = merged.speculative.get(key, 0.0) + value
        merged.timeline += shift(part.timeline, group_offset)
        group_offset += len({r.group for r in part.records})
    return merged


def merge_update_metrics(parts: list[dict[str, float]]) -> dict[str, float]:
    """Loss parts are each rank's share of the whole loss (summed); the rest are averaged."""
    out: dict[str, float] = {}
    for key in parts[0]:
        vals = [p[key] for p in parts if key in p]
        out[key] = sum(vals) if key.startswith("loss/") else sum(vals) / len(vals)
    return out


def _check_demonstrations(recipe: Recipe, built: Built) -> None:
    if recipe.algorithm.demonstrations.per_group and not any(p.solution for p in built.problems):
        raise TrainingError(NO_DEMONSTRATION_SOLUTIONS)  # app/check.py refuses it earlier


class Trainer:
    """Owns the optimizer, data position and outputs of one run."""

    def __init__(
        self,
        recipe: Recipe,
        built: Built,
        run_dir: Path,
        hooks: Any = None,  # cgrpo.train.observers.Observers
        console: Console | None = None,
    ):
        r, a = recipe, recipe.algorithm
        self.recipe, self.b, self.run_dir, self.hooks = recipe, built, run_dir, hooks
        self.rank, self.world = distributed.rank(), distributed.world_size()
        if a.prompts_per_step % (self.world * a.updates_per_step):
            raise TrainingError(
                f"algorithm.prompts_per_step={a.prompts_per_step} must be divisible by "
                f"world_size x updates_per_step = {self.world} x {a.updates_per_step}"
            )
        self.data = DataStream(built.problems, seed=r.run.seed, shuffle=r.data.shuffle)
        self.optimizer, self.scheduler = make_optimizer(
            built.model, r.optim, total_updates=r.train.steps * a.updates_per_step
        )
        self.eos_ids = eos_token_ids(built.model.generation_config, built.tokenizer)
        self.pad_id = built.tokenizer.pad_token_id
        s = r.sampling
        if r.rollout.speculative_refinement:
            check_speculation(built.policy)
        self.pipeline: Pipeline | None = None  # rollout.max_staleness >= 1 (pipeline.py)
        self.pipeline_figures: dict[str, float] = {}  # the last pipelined step's rows
        if r.rollout.max_staleness:
            check_pipeline(built.policy, self.world)
            built.policy.accept_lag = r.rollout.max_staleness
            self.pipeline = Pipeline(r.rollout.max_staleness, r.run.reproducible_sampling)
        self.rollout_settings = RolloutSettings(
            samples_per_prompt=a.samples_per_prompt,
            refinements_per_prompt=a.refinements_per_prompt,
            refine=a.refine,
            max_refinements_generated=a.max_refinements_generated,
            fallback=a.fallback,
            speculative=r.rollout.speculative_refinement,
            selection=a.selection,
            demonstrations=a.demonstrations.per_group,
            demonstrations_when=a.demonstrations.when,
            sample_refinements=a.objective != "critique_ft",
            sampling=SamplingParams(
                n=a.samples_per_prompt,
                temperature=s.temperature,
                top_p=s.top_p,
                top_k=s.top_k,
                max_new_tokens=s.max_new_tokens,
            ),
        )
        _check_demonstrations(recipe, built)
        fine_tuning = a.objective != "policy_gradient"
        self.update_settings = UpdateSettings(
            updates_per_step=a.updates_per_step,
            micro_batch_size=a.micro_batch_size,
            temperature=s.temperature,
            loss=fine_tune_loss(loss_config(r)) if fine_tuning else loss_config(r),
            grad_clip=r.optim.grad_clip,
            max_tokens_per_micro_batch=a.max_tokens_per_micro_batch,
            logprob_chunk_tokens=a.logprob_chunk_tokens,
            precision=built.precision,
            micro_batch_tokens=a.micro_batch_tokens,
            term_micro_batch_budget=a.loss.micro_batch_token_budget,
        )
        if a.micro_batch_tokens is not None:
            require_packing(built.model)
        self.ref_model = built.ref_model  # None when kl_coef == 0 (no copy is loaded)
        self.step_done = 0
        self.nonfinite_in_a_row = 0
        self.best: tuple[float, int] | None = None  # (value of train.keep_best, step)
        # rewards and evaluation verified in worker processes (their start is lazy)
        self.verify_pool = VerifyPool(auto_workers(self.recipe.run.verify_workers, self.world))
        self.stop_signal: str | None = None
        self.main = distributed.is_main()
        self.console = console or Console(r.train.steps, r.run.console if self.main else "off")
        self.metrics_out = JsonlWriter(run_dir / "metrics.jsonl") if self.main else None
        self.samples_out = JsonlWriter(run_dir / "samples.jsonl") if self.main else None
        # each step's per-group stage spans (train/timeline.py), for `cgrpo report`
        self.timeline_out = JsonlWriter(run_dir / "timeline.jsonl") if self.main else None
        self.logged_samples: list[dict[str, Any]] = []  # the last step's samples.jsonl lines

    # -- one step -------------------------------------------------------------------------
    def assign_advantages(self, rows: list[TrainRow]) -> None:
        """Step 7: one advantage per sequence from its group's rewards."""
        groups = sorted({r.group for r in rows})
        index = {g: i for i, g in enumerate(groups)}
        width = max(sum(1 for r in rows if r.group == g) for g in groups)
        rewards = torch.zeros(len(groups), width, dtype=torch.float64)  # exact to the loss
        mask = torch.zeros(len(groups), width, dtype=torch.bool)
        slots: list[tuple[int, int]] = []
        fill = dict.fromkeys(groups, 0)
        for r in rows:
            gi, j = index[r.group], fill[r.group]
            rewards[gi, j], mask[gi, j] = r.reward, True
            fill[r.group] += 1
            slots.append((gi, j))
        adv = self.b.advantage.compute(rewards, mask)
        for r, (gi, j) in zip(rows, slots, strict=True):
            r.advantage = float(adv[gi, j])

    def recompute_old_logprobs(self, rows: list[TrainRow]) -> None:
        """Old log-probs from the trainer's model (for samplers whose numbers differ)."""
        settings = self.update_settings
        initial = [r for r in rows if not r.is_refinement]
        plan = micro_batches(initial, settings, self.pad_id)
        if is_sharded(self.b.model):  # as many forward calls on every rank (see sharding.py)
            plan += [([], plan[-1][1])] * padding_to_match_ranks(len(plan))
        with torch.no_grad(), settings.precision.autocast():
            for chunk, batch in plan:
                lp, _ = forward_response(
                    self.b.model,
                    batch,
                    settings.temperature,
                    "none",
                    settings.logprob_chunk_tokens,
                )
                for r, row_lp in zip(chunk, lp.float().cpu(), strict=False):
                    r.sampler_logprobs = r.old_logprobs
                    r.old_logprobs = row_lp[: len(r.response_ids)]

    def fine_tune_rows(self, ro: Rollout) -> list[TrainRow]:
        """The rows of a fine-tuning objective (:func:`cgrpo.train.fine_tune.fine_tune_rows`)."""
        prompts, tok, r = self.b.prompts, self.b.tokenizer, self.recipe
        template, room = r.algorithm.fine_tune.critique_template, r.sampling.max_new_tokens

        def critique_row(rec):
            try:
                prompt = prompts.critique_ids(rec.problem, rec.completion.text, template)
            except RefinementTooLong:
                return None
            return prompt, critique_target(tok, rec.critique.text, room)

        return fine_tune_rows(
            ro, r.algorithm.objective, self.eos_ids, prompts.prompt_ids, critique_row
        )

    def update(self, rows: list[TrainRow]) -> dict[str, float]:
        """Steps 8-9. A fine-tuning step with no row on any rank (RAFT on problems the
        policy always fails) takes no optimizer step; a rank without rows while others
        have some trains an empty row (no token: no loss, no gradient) to keep in step."""
        if self.recipe.algorithm.objective != "policy_gradient":
            total = distributed.sum_scalar(float(len(rows)))
            if total == 0:
                return {"fine_tune/rows": 0.0, "update/skipped_empty": 1.0}
            if not rows:
                rows = [TrainRow(0, [self.pad_id], [], None, True, 0.0, 0.0)]
        upd = self._update(rows)
        if self.recipe.algorithm.objective != "policy_gradient":
            upd["fine_tune/rows"] = distributed.sum_scalar(
                float(sum(bool(x.response_ids) for x in rows))
            )
        return upd

    def sampling_weights(self):
        """Context for sampling (:func:`cgrpo.model.sharding.sampling_weights`)."""
        from cgrpo.model.sharding import sampling_weights

        return sampling_weights(self.b.policy, self.b.model)

    def verify_submit(self, pairs: list, batch: int):
        """Start verifying (response, problem) pairs, part of a batch of ``batch``: in the
        worker processes when the verifier opts in and the batch is large enough
        (:mod:`cgrpo.train.verify_pool`), else here and now. Returns the pending verdicts."""
        spec = (self.recipe.verifier.name, dict(self.recipe.verifier.options))
        return self.verify_pool.submit_routed(
            (self.b.verifier, spec), self.b.verifier_routes, pairs, batch
        )

    def _rollout_args(self, step: int, mine: list, share: int, seed: int | None) -> dict:
        """The arguments of step ``step``'s rollout (1-6) of the problems ``mine``."""
        r = self.recipe
        return dict(
            problems=mine,
            prompt_ids=[self.b.prompts.prompt_ids(p) for p in mine],
            policy=self.b.policy,
            verifier=self.b.verifier,
            critic=self.b.critic if r.algorithm.refinements_per_prompt else None,
            prompts=self.b.prompts,
            settings=self.rollout_settings,
            verify_submit=self.verify_submit,
            eos_ids=self.eos_ids,
            rng_key=f"{r.run.seed}:{step}",
            prompt_offset=self.rank * share,
            seed=seed,
        )

    def _step_seed(self, step: int) -> int | None:
        """Per-request seeds from (seed, step): always for a pipelined rollout (its requests
        must not draw from torch's random state, which the update uses meanwhile)."""
        r = self.recipe
        if r.run.reproducible_sampling or self.pipeline is not None:
            return hash((r.run.seed, step)) & 0x7FFFFFFF
        return None

    def _rows(self, step: int) -> Rollout:
        """Step ``step``'s rollout: sampled now, or taken from the pipeline."""
        if self.pipeline is not None:
            return self._pipelined_rows(step)
        problems = self.data.next_batch(self.recipe.algorithm.prompts_per_step)  # all ranks
        share = len(problems) // self.world
        mine = problems[self.rank * share : (self.rank + 1) * share]
        with self.sampling_weights():
            return self._rollout(step, mine, share)

    def _rollout(self, step: int, mine: list, share: int) -> Rollout:
        """Step ``step``'s rollout of this rank's problems ``mine``, run to the end now."""
        return rollout(**self._rollout_args(step, mine, share, self._step_seed(step)))

    # -- the pipeline (rollout.max_staleness >= 1; train/pipeline.py) -----------------------
    def _submit_through(self, last: int) -> None:
        """Submit the rollouts of the steps up to ``last`` not submitted yet, in order."""
        pipe, size = self.pipeline, self.recipe.algorithm.prompts_per_step
        first = (pipe.submitted_through or self.step_done) + 1
        for s in range(first, min(last, self.recipe.train.steps) + 1):
            state = self.data.state_dict()
            problems = self.data.next_batch(size)
            args = self._rollout_args(s, problems, len(problems), self._step_seed(s))
            pipe.submit(s, state, rollout_async(**args))

    def _pipelined_rows(self, step: int) -> Rollout:
        """Step ``step``'s rows: taken (waiting if need be), the groups too old dropped and
        resampled; then the next rollouts start, up to step + N."""
        pipe = self.pipeline
        self._submit_through(step)
        ro = pipe.take(step)
        version = self.b.policy.weight_version
        ro, lost = self._replace_stale(step, ro, version)
        self._submit_through(step + pipe.max_staleness)
        self.pipeline_figures = {**lost, **staleness_summary(ro.rows, version)}
        return ro

    def _replace_stale(self, step: int, ro: Rollout, version: int) -> tuple[Rollout, dict]:
        """Drop the groups holding a row more than N updates old and sample them again
        with the current weights (until none is; a sampler that keeps answering with old
        weights after 3 tries is an error); returns the rows and what was thrown away."""
        lost = {"rows_dropped": 0.0, "groups_resampled": 0.0, "wasted_critiques": 0.0}
        for attempt in range(4):
            stale = stale_groups(ro.rows, version, self.pipeline.max_staleness)
            if not stale:
                return ro, lost
            if attempt == 3:
                raise TrainingError(
                    f"step {step}: the sampler still answers with weights more than "
                    f"rollout.max_staleness={self.pipeline.max_staleness} versions older than "
                    f"{version} after 3 resamplings"
                )
            problems = [next(r.problem for r in ro.records if r.group == g) for g in sorted(stale)]
            ro, dropped = drop_groups(ro, stale)
            lost = {k: lost[k] + dropped[k] for k in lost}
            seed = hash((self.recipe.run.seed, step, version, attempt)) & 0x7FFFFFFF
            args = self._rollout_args(step, problems, len(problems), seed)
            ro = merge_rollouts([ro, self.pipeline.run(rollout_async(**args))])
            count_outcomes(ro)
        return ro, lost

    def _push_weights(self) -> None:
        """After the update: the new weights to the sampler (with a fixed lag, once every
        rollout in flight has finished on the old ones)."""
        if self.pipeline is None:
            self.b.policy.sync_weights(self.b.model)
            return
        if self.pipeline.fixed_lag:
            self.pipeline.drain()
        with self.pipeline.span("trainer", "sync"):
            self.b.policy.sync_weights(self.b.model)

    def _pipeline_metrics(self, rows: list[TrainRow], upd: dict[str, float]) -> dict:
        """The pipeline's per-step figures; the sampler/trainer gap split by cause (the
        update's own figure would mix the engine's numerics and the weights' drift)."""
        version = self.b.policy.weight_version - 1  # the rows were trained before the push
        gaps = logprob_gaps(rows, version)
        for key in ("sampler/logprob_diff_mean", "sampler/logprob_diff_max"):
            upd.pop(key, None)
        out = {f"pipeline/{k}": v for k, v in self.pipeline_figures.items()}
        out.update({f"pipeline/{k}": v for k, v in self.pipeline.step_metrics().items()})
        for side, name in (("engine", "sampler/logprob_diff"), ("drift", "pipeline/drift")):
            for stat in ("mean", "max"):
                if f"{side}_{stat}" in gaps:
                    out[f"{name}_{stat}"] = gaps[f"{side}_{stat}"]
        return out

    def _update(self, rows: list[TrainRow]) -> dict[str, float]:
        """8-9: the loss and the optimizer steps (a span of the pipeline's timeline)."""
        args = (self.b.model, self.optimizer, self.scheduler, rows, self.update_settings)
        if self.pipeline is None:
            return update_policy(*args, self.pad_id, self.ref_model)
        with self.pipeline.span("trainer", "update"):
            return update_policy(*args, self.pad_id, self.ref_model)

    def step(self, step: int) -> dict[str, float]:
        r = self.recipe
        started = time.perf_counter()
        torch.manual_seed(hash((r.run.seed, step, self.rank)) & 0x7FFFFFFF)
        ro = self._rows(step)  # 1-6
        self._guard_verifier_errors(step, ro)
        if r.algorithm.objective == "policy_gradient":
            self.assign_advantages(ro.rows)  # 7
            if r.algorithm.old_logprobs == "recompute":
                self.recompute_old_logprobs(ro.rows)
        else:  # a fine-tuning baseline: its rows replace the group's (fine_tune.py)
            ro.rows = self.fine_tune_rows(ro)
        maybe_crash("step", step)
        t_update = time.perf_counter()
        release = getattr(self.b.policy, "release_memory", None)
        if callable(release):  # e.g. vLLM sleeps during the update on GPU
            release()
        upd = self.update(ro.rows)  # 8-9
        t_updated = time.perf_counter()
        self._push_weights()
        now = time.perf_counter()
        if self.pipeline is not None:
            upd.update(self._pipeline_metrics(ro.rows, upd))
        ro = merge_rollouts(distributed.gather(ro))
        upd = merge_update_metrics(distributed.gather(upd))
        metrics = {
            "step": step,
            **rollout_metrics(ro, advantages=r.algorithm.objective == "policy_gradient"),
            **upd,
            "time/update": t_updated - t_update,
            "time/sync": now - t_updated,
            "time/step": now - started,
        }
        sampled = sum(len(rec.completion.token_ids) for rec in ro.records)
        metrics["throughput/sampled_tokens_per_s"] = sampled / max(1e-9, now - started)
        metrics["data/epoch"] = float(self.data.epoch)
        for area, part in (("critique", self.b.critic), ("policy", self.b.policy)):
            telemetry = getattr(part, "telemetry", None)
            if callable(telemetry) and (area == "policy" or r.algorithm.refinements_per_prompt):
                metrics.update({f"{area}/{k}": v for k, v in telemetry().items()})
        if r.eval.every and (step % r.eval.every == 0 or step == r.train.steps):
            metrics.update(self.evaluate())
        self.logged_samples = []
        if self.main:
            self.metrics_out.write(metrics)
            self.logged_samples = list(sample_lines(step, ro, r.train.log_samples))
            for line in self.logged_samples:
                self.samples_out.write(line)
            line = {"step": step, "spans": [s.as_list() for s in ro.timeline]}
            if self.pipeline is not None:  # the run's lanes: who waited for whom
                line["pipeline"] = self.pipeline.take_events()
            self.timeline_out.write(line)
        return metrics

    def _evaluate_at_start(self) -> None:
        """Step 0: the policy before any RL step, the baseline of every eval curve. Written
        to metrics.jsonl and shown to the recipe's observers (not to the plugins' global
        ``on_step_end``, whose implementations expect a training step's metrics)."""
        metrics = {"step": 0, **self.evaluate()}
        if self.main:
            self.metrics_out.write(metrics)
            self.console.evaluated("RL step 0", metrics)
            if self.hooks is not None:
                self.hooks.step(step=0, metrics=metrics, samples=[], training=False)

    def evaluate(self) -> dict[str, float]:
        """Greedy pass@1 (and k-sample metrics) on the evaluation sets, now (every rank
        calls it; rank 0 computes, all ranks receive)."""
        return evaluate_now(self.b, self.recipe, self.verify_pool, self.step_done)

    # -- state, checkpoints, guards ----------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The trainer state beside the weights; a sharded model's optimizer state is
        saved by every rank in the checkpoint's ``dcp/`` instead."""
        state = {
            "scheduler": self.scheduler.state_dict(),
            # with rollouts in flight, the position before the oldest one's problems: a
            # resumed run draws them again and samples them from the checkpoint's weights
            "data": (self.pipeline and self.pipeline.data_state()) or self.data.state_dict(),
            "best": self.best,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
        }
        critic_state = getattr(self.b.critic, "state_dict", None)
        if callable(critic_state):
            state["critic"] = critic_state()
        if not is_sharded(self.b.model):
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state(self, state: dict[str, Any], checkpoint: Path | None = None) -> None:
        """Restore what :meth:`state` saved. Weights are loaded with the model, except a
        sharded model's, which come with the optimizer from ``checkpoint``'s shards."""
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        else:
            load_sharded_state(checkpoint, self.b.model, self.optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        self.data.load_state_dict(state["data"])
        self.step_done = int(state["step"])
        self.best = state.get("best")
        self.nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))
        critic_load = getattr(self.b.critic, "load_state_dict", None)
        if callable(critic_load) and "critic" in state:
            critic_load(state["critic"])
        restore_rng(state["rng"])
        self.console.resume_at(self.step_done)

    def save(self, step: int) -> None:
        if is_sharded(self.b.model):  # every rank writes its shards
            save_sharded_checkpoint(
                self.run_dir,
                step,
                self.b.model,
                self.optimizer,
                self.b.tokenizer,
                self.state(),
                hf_weights=step == self.recipe.train.steps,
            )
            if self.main:
                keep = {self.best[1]} if self.best is not None else set()
                prune_checkpoints(self.run_dir, self.recipe.train.keep_last, keep)
            distributed.barrier()
            return
        if self.main:
            save_checkpoint(self.run_dir, step, self.b.model, self.b.tokenizer, self.state())
            keep = {self.best[1]} if self.best is not None else set()
            prune_checkpoints(self.run_dir, self.recipe.train.keep_last, keep)
        distributed.barrier()

    def _track_best(self, step: int, metrics: dict[str, float]) -> bool:
        key = self.recipe.train.keep_best
        if key is None or key not in metrics:
            return False
        if self.best is None or metrics[key] > self.best[0]:
            self.best = (metrics[key], step)
            return True
        return False

    def _guard_nonfinite(self, metrics: dict[str, float]) -> None:
        if metrics.get("update/skipped_nonfinite", 0.0) > 0:
            self.nonfinite_in_a_row += 1
        else:
            self.nonfinite_in_a_row = 0
        limit = self.recipe.train.max_nonfinite_steps
        if self.nonfinite_in_a_row >= limit:
            last = complete_checkpoints(self.run_dir)
            where = f"; the last good checkpoint is {last[-1][1]}" if last else ""
            raise TrainingError(
                f"{self.nonfinite_in_a_row} steps in a row had non-finite loss or gradients "
                f"(updates skipped){where}. Lower optim.lr, check the data, or raise "
                "train.max_nonfinite_steps"
            )

    def _guard_verifier_errors(self, step: int, ro: Rollout) -> None:
        """Stop before the update when every verification of the step (on every rank)
        raised: training on reward 0 everywhere would teach nothing and end in exit 0,
        unless ``train.verifier_errors: tolerate``."""
        raised = [r.verdict for r in ro.records if r.verdict.raised]
        errors = distributed.sum_scalar(float(len(raised)))
        total = distributed.sum_scalar(float(len(ro.records)))
        if not errors or errors < total or self.recipe.train.verifier_errors == "tolerate":
            return
        first = raised[0].reason if raised else "on another rank"
        raise VerifierError(
            f"every verification of step {step} raised ({total:.0f} responses), so no "
            f"response has a reward: the verifier {self.recipe.verifier.name!r} is broken, "
            f"not the policy. The first: {first} (its traceback is above and in "
            "train.log). Fix the verifier, or set train.verifier_errors: tolerate to train "
            "on with reward 0"
        )

    def _on_signal(self, signum, frame) -> None:
        self.stop_signal = signal.Signals(signum).name
        self.console.message(
            f"cgrpo: {self.stop_signal}: saving a checkpoint after this step "
            "(send again to stop at once)"
        )
        signal.signal(
            signum, signal.SIG_DFL if signum == signal.SIGTERM else signal.default_int_handler
        )

    def _close_pipeline(self) -> None:
        cancelled = self.pipeline.close()
        if cancelled:
            self.console.message(
                f"cgrpo: {cancelled} rollouts in flight were cancelled; a resumed run samples "
                "their problems again from its checkpoint's weights"
            )

    def fit(self) -> str:
        """Train to ``train.steps``; returns 'completed' or 'interrupted' (checkpoint saved)."""
        r = self.recipe
        handlers = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        if hasattr(self.b.policy, "weight_version"):  # a resumed run goes on counting
            self.b.policy.weight_version = self.step_done
        self.b.policy.sync_weights(self.b.model)  # a separate sampler starts from these weights
        try:
            if r.eval.every and r.eval.at_start and self.step_done == 0:
                self._evaluate_at_start()
            for step in range(self.step_done + 1, r.train.steps + 1):
                metrics = self.step(step)
                self.step_done = step
                self.console.step(step, metrics)
                if self.hooks is not None and self.main:
                    self.hooks.step(step=step, metrics=metrics, samples=self.logged_samples)
                self._guard_nonfinite(metrics)
                stop = distributed.sum_scalar(float(self.stop_signal is not None)) > 0
                new_best = self._track_best(step, metrics)
                if (
                    stop
                    or step == r.train.steps
                    or new_best
                    or (r.train.save_every and step % r.train.save_every == 0)
                ):
                    self.save(step)
                if stop:
                    return "interrupted"
            if self.step_done == r.train.steps and not complete_checkpoints(self.run_dir):
                self.save(self.step_done)  # resumed at the end: make sure the final one exists
            return "completed"
        finally:
            for sig, old in handlers.items():
                signal.signal(sig, old)
            if self.pipeline is not None:
                self._close_pipeline()
            self.console.close()
            self.verify_pool.close()
            for out in (self.metrics_out, self.samples_out, self.timeline_out):
                if out is not None:
                    out.close()
