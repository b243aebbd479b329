"""Whole training steps on a real tiny model.

The sampler is replaced by ``ScriptedPolicy`` so each test can force a scenario (every
initial answer wrong, the refinement right): a test double at the sampling boundary only.
The verifier, critic, refinement prompts, mixing, advantages, loss and optimizer are the
real ones.
"""

import copy

import pytest
import torch

from cgrpo.app.build import build
from cgrpo.config import load_recipe
from cgrpo.plugins import get_registries
from cgrpo.train.loop import Trainer
from cgrpo.types import Completion
from tests.helpers import REPO


class ScriptedPolicy:
    """Answers every training prompt with ``initial`` and every refinement prompt (one that
    shows a critique) with ``refinement``; records the prompts it saw."""

    def __init__(self, tokenizer, initial: str, refinement: str):
        self.tok, self.initial, self.refinement = tokenizer, initial, refinement
        self.seen: list[str] = []

    def generate(self, prompts, params, seeds=None):
        out = []
        for ids in prompts:
            text = self.tok.decode(ids)
            self.seen.append(text)
            answer = self.refinement if "Critique" in text else self.initial
            toks = [*self.tok.encode(answer, add_special_tokens=False), self.tok.eos_token_id]
            out.append([Completion(toks, None, answer, "stop") for _ in range(params.n)])
        return out

    def sync_weights(self, model):
        pass

    def close(self):
        pass


def make_trainer(tmp_path, tiny_model_dir, *overrides):
    recipe, _ = load_recipe(
        REPO / "recipes" / "quickstart-cpu.yaml",
        [
            f"model.path={tiny_model_dir}",
            "model.create=null",
            f"run.output_dir={tmp_path}",
            "algorithm.prompts_per_step=2",
            "algorithm.samples_per_prompt=7",
            "algorithm.micro_batch_size=8",
            "algorithm.old_logprobs=recompute",
            "optim.weight_decay=0",
            "algorithm.loss.entropy_coef=0",
            "run.console=plain",
            "data.task.options.size=20",
            *overrides,
        ],
    )
    built = build(recipe, get_registries(), tmp_path)
    (tmp_path / recipe.run.name).mkdir(parents=True, exist_ok=True)
    return Trainer(recipe, built, tmp_path / recipe.run.name), built


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def test_all_initial_wrong_and_refinement_right_trains(tmp_path, tiny_model_dir, torch_one_thread):
    trainer, built = make_trainer(tmp_path, tiny_model_dir)
    answer = {}

    class RightRefinement(ScriptedPolicy):
        def generate(self, prompts, params, seeds=None):
            out = super().generate(prompts, params, seeds)
            for ids, group in zip(prompts, out, strict=True):
                text = self.tok.decode(ids)
                if "Critique" in text:  # answer the refinement with the reference answer
                    q = next(q for q in answer if q in text)
                    toks = self.tok.encode(f"\\boxed{{{answer[q]}}}", add_special_tokens=False)
                    group[0] = Completion(
                        [*toks, self.tok.eos_token_id], None, f"\\boxed{{{answer[q]}}}", "stop"
                    )
            return out

    for p in built.problems:
        answer[p.question] = p.answer
    built.policy = trainer.b.policy = RightRefinement(built.tokenizer, r"\boxed{-1}", "")
    before = params_of(built.model)
    metrics = trainer.step(1)
    assert metrics["reward/initial_mean"] == 0.0
    assert metrics["refine/success_rate"] == 1.0 and metrics["groups/rescued_share"] == 1.0
    assert metrics["advantage/max"] == pytest.approx(0.875)  # 1 - 1/8
    assert metrics["advantage/min"] == pytest.approx(-0.125)
    assert any(not torch.equal(a, b) for a, b in zip(before, params_of(built.model), strict=False))
    # the refinement prompts showed the critique with the reference answer
    refinement_prompts = [s for s in built.policy.seen if "Critique" in s]
    assert len(refinement_prompts) == 2 * 7  # failed_groups: every response is refined
    assert all("the ground truth is" in s for s in refinement_prompts)


def test_everything_wrong_gives_zero_policy_gradient(tmp_path, tiny_model_dir, torch_one_thread):
    trainer, built = make_trainer(tmp_path, tiny_model_dir)
    built.policy = trainer.b.policy = ScriptedPolicy(built.tokenizer, r"\boxed{-1}", r"\boxed{-2}")
    before = params_of(built.model)
    metrics = trainer.step(1)
    assert metrics["refine/success_rate"] == 0.0
    assert metrics["advantage/max"] == 0.0 and metrics["advantage/min"] == 0.0
    assert metrics["loss/policy"] == 0.0
    assert metrics["update/grad_norm"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, params_of(built.model), strict=False))


def test_grpo_without_refinement_never_calls_the_critic(tmp_path, tiny_model_dir, torch_one_thread):
    trainer, built = make_trainer(
        tmp_path,
        tiny_model_dir,
        "algorithm.refinements_per_prompt=0",
        "algorithm.micro_batch_size=7",
    )
    built.policy = trainer.b.policy = ScriptedPolicy(built.tokenizer, r"\boxed{-1}", "x")
    metrics = trainer.step(1)
    assert not any("Critique" in s for s in built.policy.seen)
    assert "critique/requested" not in metrics
    assert metrics["refine/generated"] == 0.0


def test_kl_loads_a_frozen_reference_only_when_asked(tmp_path, tiny_model_dir, torch_one_thread):
    trainer, _ = make_trainer(tmp_path, tiny_model_dir)
    assert trainer.ref_model is None
    trainer, built = make_trainer(tmp_path / "kl", tiny_model_dir, "algorithm.loss.kl_coef=0.1")
    assert trainer.ref_model is not None
    assert not any(p.requires_grad for p in trainer.ref_model.parameters())
    ref_before = copy.deepcopy(params_of(trainer.ref_model))
    built.policy = trainer.b.policy = ScriptedPolicy(built.tokenizer, r"\boxed{-1}", r"\boxed{-1}")
    metrics = trainer.step(1)
    assert "kl/mean" in metrics
    assert all(
        torch.equal(a, b) for a, b in zip(ref_before, params_of(trainer.ref_model), strict=False)
    )


def test_a_refinement_prompt_that_cannot_fit_is_skipped_and_counted(
    tmp_path, tiny_model_dir, torch_one_thread
):
    """A refinement prompt that cannot fit even without the previous response (a long
    question under a long template) skips that refinement and counts it; the step goes
    on. The prompt builder is wrapped to refuse one problem's refinements."""
    from cgrpo.model.prompts import RefinementTooLong

    trainer, built = make_trainer(tmp_path, tiny_model_dir, "algorithm.refine=all")
    built.policy = trainer.b.policy = ScriptedPolicy(built.tokenizer, r"\boxed{-1}", r"\boxed{-1}")
    original = built.prompts.refinement_ids
    refused = []

    def refinement_ids(problem, response, critique):
        if not refused or refused[0] == problem.id:
            refused.append(problem.id)
            raise RefinementTooLong(f"problem {problem.id}: too long")
        return original(problem, response, critique)

    built.prompts.refinement_ids = refinement_ids
    metrics = trainer.step(1)
    assert metrics["refine/skipped_too_long"] == 7.0  # the 7 critiques of one prompt
    assert metrics["refine/generated"] == 7.0  # the other prompt's refinements


def test_samples_link_each_refinement_to_the_response_and_critique_it_refined(
    tmp_path, tiny_model_dir, torch_one_thread
):
    from cgrpo.train.metrics import sample_lines

    trainer, built = make_trainer(tmp_path, tiny_model_dir, "algorithm.refine=all")
    built.policy = trainer.b.policy = ScriptedPolicy(built.tokenizer, r"\boxed{-1}", r"\boxed{-1}")
    captured = {}
    original = trainer._rollout

    def keep(*a):
        captured["ro"] = original(*a)
        return captured["ro"]

    trainer._rollout = keep
    trainer.step(1)
    lines = sample_lines(1, captured["ro"], limit=10_000)
    by_id = {line["id"]: line for line in lines}
    assert len(by_id) == len(lines)  # ids are unique
    refinements = [line for line in lines if line["kind"] == "refinement"]
    assert len(refinements) == 14
    for ref in refinements:
        parent = by_id[ref["parent_id"]]
        assert parent["kind"] == "initial" and parent["group"] == ref["group"]
        assert parent["critique"] == ref["critique"] and parent["critique"]
    # with a limit, the refined responses come right after the refinements
    first = sample_lines(1, captured["ro"], limit=28)
    assert {line["parent_id"] for line in first[:14]} == {line["id"] for line in first[14:]}


def test_released_code_entropy_means_follow_its_micro_batches(
    tmp_path, tiny_model_dir, torch_one_thread
):
    """entropy_aggregation micro_batch_token_mean with a token budget (the micro-batches the
    released code's verl would form): a budget of 1 token makes every row a micro-batch of
    its own, one token mean each; a budget that holds them all makes one. The rows are 8
    identical ones per prompt (2 prompts, same token count), so the bonus is exactly 16
    times larger with the first, whatever the update's own micro-batches (8 rows each).
    Refinement rows get shaping.mode p: their mean weight is their mean probability."""
    bonus = {}
    for budget in (1, 1_000_000):
        trainer, built = make_trainer(
            tmp_path / str(budget),
            tiny_model_dir,
            "algorithm.loss.entropy_coef=0.01",
            "algorithm.loss.entropy_aggregation=micro_batch_token_mean",
            f"algorithm.loss.micro_batch_token_budget={budget}",
            "algorithm.loss.shaping={mode: p}",
        )
        built.policy = trainer.b.policy = ScriptedPolicy(
            built.tokenizer, r"\boxed{-1}", r"\boxed{-1}"
        )
        metrics = trainer.step(1)
        bonus[budget] = metrics["loss/entropy_bonus"]
        assert metrics["refine/shaped_weight_mean"] == pytest.approx(
            metrics["refine/token_prob_mean"]
        )
    assert bonus[1] < 0 and bonus[1] / bonus[1_000_000] == pytest.approx(16, rel=1e-4)
