"""The Critique-GRPO training loop.

One step, numbered like ALGORITHM.md section 2:

1-6. rollout: sample G per prompt, verify, critique, refine, select K, mix (rollout.py);
7.   advantages per group (the recipe's advantage scheme);
8-9. update: loss with the refinement mask, mini-/micro-batches, AdamW (update.py);
then the sampler receives the new weights and the step's metrics and samples are written.

Departures from the released code, on purpose: refinements are appended (G + K) instead
of overwriting a sample; sampled token ids are used (no re-tokenisation of decoded text);
K <= 0 with refinement on, or K >= N, is a recipe error. Old log-probs are the sampler's
by default (``algorithm.old_logprobs: sampler``): with the hf backend they are the same
numbers a recompute would give, so recomputing them would only cost a forward pass.

Determinism: every step reseeds torch and the fallback RNG from (run.seed, step), so a
resumed run samples exactly what an uninterrupted one would.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch

from cgrpo.recipe.build import Built
from cgrpo.recipe.schema import Recipe
from cgrpo.train.checkpoint import save_checkpoint
from cgrpo.train.data import DataStream
from cgrpo.train.loss import LossConfig
from cgrpo.train.metrics import Console, JsonlWriter, rollout_metrics, sample_lines
from cgrpo.train.mixing import TrainRow, collate
from cgrpo.train.rollout import RolloutSettings, rollout
from cgrpo.train.update import UpdateSettings, forward_response, make_optimizer, update_policy
from cgrpo.types import SamplingParams


def loss_config(recipe: Recipe) -> LossConfig:
    loss = recipe.algorithm.loss
    low, high = loss.clip.bounds()
    normalizer = recipe.sampling.max_new_tokens if loss.normalizer == "auto" else loss.normalizer
    return LossConfig(
        clip_low=low,
        clip_high=high,
        shaping_gamma=loss.shaping.gamma if loss.shaping.mode == "p_over_p_plus_gamma" else None,
        aggregation=loss.aggregation,
        normalizer=float(normalizer),
        entropy_coef=loss.entropy_coef,
        kl_coef=loss.kl_coef,
        kl_estimator=loss.kl_estimator,
    )


class Trainer:
    """Owns the optimizer, data position and outputs of one run."""

    def __init__(
        self,
        recipe: Recipe,
        built: Built,
        run_dir: Path,
        hooks: Any = None,
        console: Console | None = None,
    ):
        r, a = recipe, recipe.algorithm
        self.recipe, self.b, self.run_dir, self.hooks = recipe, built, run_dir, hooks
        self.data = DataStream(built.problems, seed=r.run.seed, shuffle=r.data.shuffle)
        self.optimizer, self.scheduler = make_optimizer(
            built.model, r.optim, total_updates=r.train.steps * a.updates_per_step
        )
        eos = built.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = sorted({e for e in [*eos, built.tokenizer.eos_token_id] if e is not None})
        self.pad_id = built.tokenizer.pad_token_id
        s = r.sampling
        self.rollout_settings = RolloutSettings(
            samples_per_prompt=a.samples_per_prompt,
            refinements_per_prompt=a.refinements_per_prompt,
            refine=a.refine,
            max_refinements_generated=a.max_refinements_generated,
            fallback=a.fallback,
            sampling=SamplingParams(
                n=a.samples_per_prompt,
                temperature=s.temperature,
                top_p=s.top_p,
                top_k=s.top_k,
                max_new_tokens=s.max_new_tokens,
            ),
        )
        self.update_settings = UpdateSettings(
            updates_per_step=a.updates_per_step,
            micro_batch_size=a.micro_batch_size,
            temperature=s.temperature,
            loss=loss_config(r),
            grad_clip=r.optim.grad_clip,
        )
        self.ref_model = None
        if a.loss.kl_coef > 0:  # KL 0 loads no reference model
            import copy

            self.ref_model = copy.deepcopy(built.model).eval().requires_grad_(False)
        self._prompt_cache: dict[str, list[int]] = {}
        self.step_done = 0
        self.console = console or Console(r.train.steps, r.run.console)
        self.metrics_out = JsonlWriter(run_dir / "metrics.jsonl")
        self.samples_out = JsonlWriter(run_dir / "samples.jsonl")

    def prompt_ids(self, problem) -> list[int]:
        if problem.id not in self._prompt_cache:
            self._prompt_cache[problem.id] = self.b.prompts.prompt_ids(problem)
        return self._prompt_cache[problem.id]

    def assign_advantages(self, rows: list[TrainRow]) -> None:
        """Step 7: one advantage per sequence from its group's rewards."""
        groups = sorted({r.group for r in rows})
        width = max(sum(1 for r in rows if r.group == g) for g in groups)
        rewards = torch.zeros(len(groups), width)
        mask = torch.zeros(len(groups), width, dtype=torch.bool)
        slots: list[tuple[int, int]] = []
        fill = {g: 0 for g in groups}
        for r in rows:
            gi, j = groups.index(r.group), fill[r.group]
            rewards[gi, j], mask[gi, j] = r.reward, True
            fill[r.group] += 1
            slots.append((gi, j))
        adv = self.b.advantage.compute(rewards, mask)
        for r, (gi, j) in zip(rows, slots, strict=True):
            r.advantage = float(adv[gi, j])

    def recompute_old_logprobs(self, rows: list[TrainRow]) -> None:
        """Old log-probs from the trainer's model (for samplers whose numbers differ)."""
        mb = self.update_settings.micro_batch_size
        initial = [r for r in rows if not r.is_refinement]
        with torch.no_grad():
            for start in range(0, len(initial), mb):
                chunk = initial[start : start + mb]
                lp, _ = forward_response(
                    self.b.model,
                    collate(chunk, self.pad_id),
                    self.update_settings.temperature,
                    False,
                )
                for r, row_lp in zip(chunk, lp.cpu().tolist(), strict=True):
                    r.old_logprobs = row_lp[: len(r.response_ids)]

    def step(self, step: int) -> dict[str, float]:
        r = self.recipe
        started = time.perf_counter()
        torch.manual_seed(hash((r.run.seed, step)) & 0x7FFFFFFF)
        rng = random.Random(f"{r.run.seed}:{step}")
        problems = self.data.next_batch(r.algorithm.prompts_per_step)
        ro = rollout(  # 1-6
            problems,
            [self.prompt_ids(p) for p in problems],
            policy=self.b.policy,
            verifier=self.b.verifier,
            critic=self.b.critic if r.algorithm.refinements_per_prompt else None,
            prompts=self.b.prompts,
            settings=self.rollout_settings,
            eos_ids=self.eos_ids,
            rng=rng,
        )
        self.assign_advantages(ro.rows)  # 7
        if r.algorithm.old_logprobs == "recompute":
            self.recompute_old_logprobs(ro.rows)
        t_update = time.perf_counter()
        upd = update_policy(
            self.b.model,
            self.optimizer,
            self.scheduler,
            ro.rows,  # 8-9
            self.update_settings,
            self.pad_id,
            self.ref_model,
        )
        self.b.policy.sync_weights(self.b.model)
        now = time.perf_counter()
        metrics = {
            "step": step,
            **rollout_metrics(ro),
            **upd,
            "time/update": now - t_update,
            "time/step": now - started,
        }
        sampled = sum(len(rec.completion.token_ids) for rec in ro.records)
        metrics["throughput/sampled_tokens_per_s"] = sampled / max(1e-9, now - started)
        metrics["data/epoch"] = float(self.data.epoch)
        telemetry = getattr(self.b.critic, "telemetry", None)
        if callable(telemetry) and r.algorithm.refinements_per_prompt:
            metrics.update({f"critique/{k}": v for k, v in telemetry().items()})
        self.metrics_out.write(metrics)
        for line in sample_lines(step, ro, r.train.log_samples):
            self.samples_out.write(line)
        return metrics

    def state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "data": self.data.state_dict(),
        }

    def save(self, step: int) -> Path:
        return save_checkpoint(self.run_dir, step, self.b.model, self.b.tokenizer, self.state())

    def fit(self) -> None:
        r = self.recipe
        try:
            for step in range(self.step_done + 1, r.train.steps + 1):
                metrics = self.step(step)
                self.step_done = step
                self.console.step(step, metrics)
                if self.hooks is not None:
                    self.hooks.on_step_end(step=step, metrics=metrics)
                if r.train.save_every and step % r.train.save_every == 0 and step < r.train.steps:
                    self.save(step)
            self.save(r.train.steps)
        finally:
            self.console.close()
            self.metrics_out.close()
            self.samples_out.close()
