"""The pipelined trainer (``rollout.max_staleness``) on the tiny model, with a sampler that
holds its own copy of the weights: the hf backend on a deep copy of the trainer's model,
synced at every push. It stands in for the vLLM servers, which tests/vllm/
test_vllm_server.py runs for real; here each request also waits a random time, so the
checks below hold whatever the timing. The recipe rule (policy: vllm-server only) is
bypassed on purpose by setting the field after validation."""

from __future__ import annotations

import asyncio
import copy
import json
import random
import threading

import pytest

from cgrpo.builtins.policies.hf import HFPolicy
from cgrpo.interfaces import BuildContext
from tests.integration.test_loop import make_trainer


class CopySampler:
    """Samples with its own copy of the weights, labelled with the pushes it received
    (1 for the weights the run starts with), like a vLLM server. With ``stale_once`` the
    first answer for each problem's prompt reports weights 5 versions old."""

    batches_continuously = True

    def __init__(self, built, recipe, stale_once: bool = False):
        self.model = copy.deepcopy(built.model)
        ctx = BuildContext(model=self.model, tokenizer=built.tokenizer, recipe=recipe)
        self.inner = HFPolicy(HFPolicy.Options(), ctx)
        self.weight_version, self.accept_lag = 0, 0
        self.lock = threading.Lock()  # a push waits for the requests in flight
        self.jitter = random.Random()  # timing only: never seeded
        self.stale_once, self.staled = stale_once, set()
        self.tok = built.tokenizer

    def sync_weights(self, model):
        with self.lock:
            self.model.load_state_dict(model.state_dict())
            self.weight_version += 1

    async def sample(self, prompt_ids, params, seed=None):
        await asyncio.sleep(self.jitter.uniform(0, 0.05))
        return await asyncio.to_thread(self._sample, list(prompt_ids), params, seed)

    def _sample(self, prompt_ids, params, seed):
        with self.lock:
            version = self.weight_version
            out = self.inner.generate([prompt_ids], params, seeds=[seed])[0]
        text = self.tok.decode(prompt_ids)
        if self.stale_once and "Critique" not in text and text not in self.staled:
            self.staled.add(text)
            version -= 5
        for c in out:
            c.weight_version = version
        return out

    def generate(self, prompts, params, seeds=None):
        return self.inner.generate(prompts, params, seeds)

    def close(self):
        pass


def pipelined(tmp_path, tiny_model_dir, n, *overrides, stale_once=False):
    trainer, built = make_trainer(
        tmp_path, tiny_model_dir, "algorithm.loss.tis_cap=2.0", "train.log_samples=1000",
        "train.steps=3", "sampling.max_new_tokens=16",
        "algorithm.loss.entropy_coef=0.01", *overrides,
    )  # fmt: skip
    from cgrpo.train.loop import Trainer

    recipe = trainer.recipe.model_copy(deep=True)
    recipe.rollout.max_staleness = n
    built.policy = CopySampler(built, recipe, stale_once)
    trainer.verify_pool.close()
    return Trainer(recipe, built, trainer.run_dir), built


def read(run_dir, name):
    return [json.loads(x) for x in (run_dir / name).read_text().splitlines()]


def test_a_fixed_lag_trains_exactly_the_rows_of_weights_t_minus_n(
    tmp_path, tiny_model_dir, torch_one_thread
):
    """N = 1 with run.reproducible_sampling: step 1 trains weights 1 (nothing older
    exists), step 2 weights 1, step 3 weights 2; every sample and refinement says so, and
    the gap to the trainer is named by its cause (engine at step 1, drift after)."""
    trainer, _ = pipelined(tmp_path, tiny_model_dir, 1, "run.reproducible_sampling=true")
    assert trainer.fit() == "completed"
    samples = read(trainer.run_dir, "samples.jsonl")
    assert {s["kind"] for s in samples} == {"initial", "refinement"}
    for s in samples:
        want = max(1, s["step"] - 1)
        assert (s["weight_version"], s["group_weight_version"]) == (want, want), s
    metrics = read(trainer.run_dir, "metrics.jsonl")
    assert [m["pipeline/staleness_max"] for m in metrics] == [0, 1, 1]
    assert [m["pipeline/rows_dropped"] for m in metrics] == [0, 0, 0]
    assert metrics[0]["sampler/logprob_diff_max"] < 1e-4  # same weights: the engine only
    assert "pipeline/drift_max" not in metrics[0]
    for m in metrics[1:]:  # older weights: the drift, under its own name
        assert "sampler/logprob_diff_max" not in m
        assert m["pipeline/drift_max"] > 1e-4
        assert m["pipeline/trainer_wait_s"] >= 0 and m["pipeline/server_wait_s"] >= 0
    lanes = [x["pipeline"] for x in read(trainer.run_dir, "timeline.jsonl")]
    rollouts = [label for lane in lanes for kind, label, *_ in lane if kind == "rollout"]
    assert sorted(rollouts) == ["1", "2", "3"]  # no rollout past train.steps
    from cgrpo.report import pipeline_figures, read_run

    (png,) = pipeline_figures([read_run(trainer.run_dir)], tmp_path / "report")
    assert png.name == "pipeline-timeline.png" and png.stat().st_size > 1000


def test_a_row_older_than_n_is_dropped_and_its_group_resampled(
    tmp_path, tiny_model_dir, torch_one_thread
):
    """The sampler's first answer for every prompt claims weights 5 versions old: every
    group is dropped (its rows counted), resampled with the current weights, and nothing
    trained is older than N."""
    trainer, _ = pipelined(tmp_path, tiny_model_dir, 1, "train.steps=1", stale_once=True)
    assert trainer.fit() == "completed"
    (m,) = read(trainer.run_dir, "metrics.jsonl")
    a = trainer.recipe.algorithm
    assert m["pipeline/groups_resampled"] == a.prompts_per_step
    assert a.prompts_per_step * a.samples_per_prompt <= m["pipeline/rows_dropped"]
    assert m["pipeline/rows_dropped"] <= a.prompts_per_step * a.group_size
    assert m["pipeline/staleness_max"] == 0
    samples = read(trainer.run_dir, "samples.jsonl")
    assert {s["weight_version"] for s in samples} == {1}
    assert len({s["prompt_id"] for s in samples}) == a.prompts_per_step


@pytest.mark.parametrize("setting", ["hf", "vllm"])
def test_max_staleness_needs_a_server_backend_and_the_correction(setting, tiny_model_dir):
    from cgrpo.config.validate import validate_recipe
    from cgrpo.errors import RecipeError

    base = {
        "model": {"path": str(tiny_model_dir)},
        "data": {"task": "arithmetic"},
        "rollout": {"max_staleness": 1},
    }
    with pytest.raises(RecipeError) as err:
        validate_recipe({**base, "policy": {"name": setting}})
    assert "rollout.max_staleness" in str(err.value) and "vllm-server" in str(err.value)
    with pytest.raises(RecipeError) as err:
        validate_recipe(
            {**base, "policy": {"name": "vllm-server", "options": {"urls": ["http://x"]}}}
        )
    text = str(err.value)
    assert "algorithm.old_logprobs" in text and "recompute" in text
    assert "algorithm.loss.tis_cap" in text
    ok = {**base, "policy": {"name": "vllm-server", "options": {"urls": ["http://x"]}},
          "algorithm": {"old_logprobs": "recompute", "loss": {"tis_cap": 2.0}}}  # fmt: skip
    assert validate_recipe(ok).rollout.max_staleness == 1
