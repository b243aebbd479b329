"""The SFT warm-up uses the recipe's optimizer settings (it ignored optim.grad_clip,
weight_decay and betas before, with a hard-coded clip of 1.0 and AdamW's defaults)."""

import copy

import pytest
import torch

from cgrpo.config.schema import OptimConfig, PromptConfig, RefinementConfig, SFTConfig
from cgrpo.model.prompts import PromptBuilder
from cgrpo.train.sft import sft_warmup
from cgrpo.types import Problem


def warm_up(tiny_model_dir, tok, optim):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    before = [p.detach().clone() for p in model.parameters()]
    problems = [
        Problem(str(i), f"What is {i} + 1?", str(i + 1), f"{i} + 1 = {i + 1}") for i in range(8)
    ]
    prompts = PromptBuilder(tok, PromptConfig(), RefinementConfig(), 128, 32)
    history = sft_warmup(
        model, tok, problems, prompts, SFTConfig(steps=2, batch_size=4, lr=1e-3), 0, optim=optim
    )
    change = sum(
        (p.detach() - b).abs().sum().item() for p, b in zip(model.parameters(), before, strict=True)
    )
    return change, history


@pytest.mark.parametrize(
    "setting",
    [
        {"grad_clip": 1e-6},  # gradients below AdamW's eps: the steps shrink
        {"weight_decay": 100.0},  # decoupled decay: every weight x (1 - lr x 100)
        {"betas": (0.5, 0.9)},
    ],
)
def test_sft_honours_the_optimizer_settings(tiny_model_dir, tiny, setting):
    _, tok = tiny
    base, history = warm_up(tiny_model_dir, tok, OptimConfig(grad_clip=None, weight_decay=0.0))
    changed, _ = warm_up(
        tiny_model_dir, tok, OptimConfig(**{"grad_clip": None, "weight_decay": 0.0, **setting})
    )
    assert abs(changed - base) / base > 1e-3, (setting, base, changed)
    assert history[0]["sft/grad_norm"] > 0


def test_sft_with_its_own_optimizer_and_schedule(tiny_model_dir, tiny):
    """sft.optim: the warm-up's own lr and schedule over its steps (linear decay here)."""
    from transformers import AutoModelForCausalLM

    _, tok = tiny
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    problems = [
        Problem(str(i), f"What is {i} + 1?", str(i + 1), f"{i} + 1 = {i + 1}") for i in range(8)
    ]
    prompts = PromptBuilder(tok, PromptConfig(), RefinementConfig(), 128, 32)
    cfg = SFTConfig(steps=4, batch_size=4, optim=OptimConfig(lr=2e-3, schedule="linear"))
    history = sft_warmup(model, tok, problems, prompts, cfg, 0, optim=OptimConfig(lr=1.0))
    assert [h["sft/lr"] for h in history] == pytest.approx([2e-3, 1.5e-3, 1e-3, 0.5e-3])


def test_sft_lr_beside_sft_optim_is_a_recipe_error(tmp_path):
    from cgrpo.config import load_recipe
    from cgrpo.errors import RecipeError
    from tests.unit.test_recipe import GOOD, write

    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, GOOD + "sft: {steps: 5, lr: 0.001, optim: {lr: 0.002}}\n"))
    assert [p.path for p in err.value.problems] == ["sft.lr"]


class RecordingCritic:
    """Writes the ground-truth sentence and keeps every request (what the warm-up showed)."""

    def __init__(self):
        self.requests = []

    def critique(self, requests):
        from cgrpo.types import Critique

        self.requests += requests
        return [Critique(f"The answer is {r.problem.answer}.", "rec") for r in requests]


@pytest.mark.parametrize("wrong_answer", ["other_solution", "perturbed_answer"])
def test_refinement_examples_from_their_own_source_with_a_chosen_wrong_answer(
    tiny_model_dir, tiny, wrong_answer
):
    """Plain examples from one source, refinement examples from another; the wrong
    previous response is another problem's solution or the problem's own solution with its
    final answer moved."""
    from transformers import AutoModelForCausalLM

    _, tok = tiny
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    easy = [Problem(f"e{i}", f"What is {i} + 1?", str(i + 1),
                    f"{i} + 1 = \\boxed{{{i + 1}}}") for i in range(8)]  # fmt: skip
    hard = [Problem(f"h{i}", f"What is {i} + 57?", str(i + 57),
                    f"{i} + 57 = \\boxed{{{i + 57}}}") for i in range(8)]  # fmt: skip
    prompts = PromptBuilder(tok, PromptConfig(), RefinementConfig(), 256, 32)
    critic = RecordingCritic()
    cfg = SFTConfig(steps=3, batch_size=4, lr=1e-3, refinement_share=0.5,
                    wrong_answer=wrong_answer)  # fmt: skip
    sft_warmup(model, tok, easy, prompts, cfg, 0, critic=critic, refinement_problems=hard)
    assert critic.requests, "no refinement example was drawn"
    for r in critic.requests:
        assert r.problem.id.startswith("h")  # from the refinement source only
        assert not r.verdict.correct and r.verdict.extracted != r.problem.answer
        if wrong_answer == "perturbed_answer":
            bad = int(r.verdict.extracted)
            assert 1 <= abs(bad - int(r.problem.answer)) <= 10
            q = r.problem.question.removeprefix("What is ").removesuffix("?")
            assert r.response == f"{q} = \\boxed{{{bad}}}"  # its own solution, answer moved
        else:
            assert r.response != r.problem.solution and r.response.startswith(tuple("01234567"))


def test_perturbed_answers_and_replaced_final_answers():
    import random

    from cgrpo.builtins.wrong_answers import perturbed, with_final_answer

    rng = random.Random(0)
    pool = [Problem("1", "q", "\\frac{1}{2}"), Problem("2", "q", "x + 1")]
    for _ in range(20):
        assert 1 <= abs(int(perturbed("-4", rng, pool)) + 4) <= 10
    assert perturbed("\\frac{1}{2}", rng, pool) == "x + 1"  # not an integer: another's
    assert with_final_answer("so \\boxed{7}, done", "7", "9") == "so \\boxed{9}, done"
    assert with_final_answer("7 + 0 = 7", "7", "8") == "7 + 0 = 8"  # the last occurrence
    assert (
        with_final_answer("no answer here", "7", "8") == "no answer here The answer is \\boxed{8}."
    )


def test_a_warm_up_continued_from_its_saved_state_ends_bitwise_the_same(tiny_model_dir, tiny):
    """sft.save_every: the state handed to ``save`` (optimizer, linear schedule, data RNG)
    plus the weights of that moment let a new call run the remaining steps and end exactly
    where one uninterrupted warm-up does, learning rates included."""
    from transformers import AutoModelForCausalLM

    _, tok = tiny
    problems = [
        Problem(str(i), f"What is {i} + 1?", str(i + 1), f"{i} + 1 = {i + 1}") for i in range(8)
    ]
    prompts = PromptBuilder(tok, PromptConfig(), RefinementConfig(), 128, 32)
    cfg = SFTConfig(steps=6, batch_size=3, optim=OptimConfig(lr=2e-3, schedule="linear"))

    def fresh():
        return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)

    whole = fresh()
    full = sft_warmup(whole, tok, problems, prompts, cfg, 0)
    saved = {}

    def save(step, state, _optimizer):  # as a checkpoint would: a copy of that moment
        saved[step] = (copy.deepcopy(state), {k: v.clone() for k, v in first.state_dict().items()})

    first = fresh()
    sft_warmup(first, tok, problems, prompts, cfg, 0, save=save, save_every=4)
    assert sorted(saved) == [4]
    state, weights = saved[4]
    resumed = fresh()
    resumed.load_state_dict(weights)
    rest = sft_warmup(resumed, tok, problems, prompts, cfg, 0, start={**state, "step": 4})
    assert [h["sft/lr"] for h in rest] == [h["sft/lr"] for h in full[4:]]
    assert [h["sft/loss"] for h in rest] == [h["sft/loss"] for h in full[4:]]
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_own_sample_shows_the_models_own_wrong_answers_and_resumes_exactly(tiny_model_dir, tiny):
    """sft.wrong_answer own_sample: refinement examples critique what the warm-up model
    itself sampled (the real hf backend, seeded from the warm-up's RNG) when the verifier
    finds it wrong; continued from a saved state, the warm-up ends bitwise the same."""
    from transformers import AutoModelForCausalLM

    from cgrpo.builtins.critics.rule import GroundTruthCritic
    from cgrpo.builtins.policies.hf import HFPolicy
    from cgrpo.builtins.verifiers.math import MathVerifier
    from cgrpo.interfaces import BuildContext
    from cgrpo.types import SamplingParams

    _, tok = tiny
    problems = [
        Problem(str(i), f"What is {i} + 1?", str(i + 1), f"{i} + 1 = {i + 1}. \\boxed{{{i + 1}}}")
        for i in range(8)
    ]
    prompts = PromptBuilder(tok, PromptConfig(), RefinementConfig(), 256, 24)
    cfg = SFTConfig(steps=4, batch_size=4, refinement_share=0.5, wrong_answer="own_sample")
    assert cfg.wrong_answer.name == "own_sample"
    verifier = MathVerifier(MathVerifier.Options(), None)
    seen = []

    class Recording(GroundTruthCritic):
        def critique(self, requests):
            seen.extend(requests)
            return super().critique(requests)

    critic = Recording(GroundTruthCritic.Options(), None)

    def warm(model, **kw):
        policy = HFPolicy(HFPolicy.Options(), BuildContext(model=model, tokenizer=tok))
        sampled = []

        def sample(probs, seeds):
            params = SamplingParams(n=1, max_new_tokens=24)
            out = policy.generate([prompts.prompt_ids(p) for p in probs], params, seeds)
            texts = [g[0].text for g in out]
            sampled.extend(texts)
            return [(t, verifier.verify(t, p)) for t, p in zip(texts, probs, strict=True)]

        history = sft_warmup(
            model, tok, problems, prompts, cfg, 0, critic=critic, sample=sample, **kw
        )
        return history, sampled

    def fresh():
        return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)

    whole = fresh()
    history, sampled = warm(whole)
    shares = [h["sft/own_wrong_share"] for h in history if "sft/own_wrong_share" in h]
    assert shares and max(shares) > 0  # the random tiny model gets these wrong
    own = [r for r in seen if r.response in sampled]
    assert own and all(not r.verdict.correct for r in own)

    saved = {}
    first = fresh()
    warm(
        first,
        save=lambda step, state, _optimizer: saved.setdefault(
            step, (copy.deepcopy(state), {k: v.clone() for k, v in first.state_dict().items()})
        ),
        save_every=2,
    )
    state, weights = saved[2]
    resumed = fresh()
    resumed.load_state_dict(weights)
    rest, _ = warm(resumed, start={**state, "step": 2})
    assert [h["sft/loss"] for h in rest] == [h["sft/loss"] for h in history[2:]]
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_wrong_answer_maker_writes_every_previous_response(tiny_model_dir, tiny):
    """sft_warmup asks its WrongAnswer (built-in or a plugin's) for each refinement
    example's previous response and verdict, with the refinement pool and its own RNG."""
    from transformers import AutoModelForCausalLM

    from cgrpo.builtins.wrong_answers import OtherSolution, OwnSample, PerturbedAnswer
    from cgrpo.interfaces import WrongAnswer
    from cgrpo.types import Verdict

    assert all(isinstance(c(), WrongAnswer) for c in (OtherSolution, PerturbedAnswer, OwnSample))

    class Doubled:
        uses_own_sample = False

        def make(self, problem, pool, rng, sample=None):
            bad = str(2 * int(problem.answer))
            return f"twice: {bad}", Verdict(0.0, False, bad)

    _, tok = tiny
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    problems = [Problem(str(i), f"What is {i} + 1?", str(i + 1), f"{i} + 1 = {i + 1}")
                for i in range(8)]  # fmt: skip
    prompts = PromptBuilder(tok, PromptConfig(), RefinementConfig(), 256, 32)
    critic = RecordingCritic()
    cfg = SFTConfig(steps=2, batch_size=4, refinement_share=0.5)
    sft_warmup(model, tok, problems, prompts, cfg, 0, critic=critic, wrong=Doubled())
    assert critic.requests
    for r in critic.requests:
        assert r.response == f"twice: {2 * int(r.problem.answer)}" and not r.verdict.correct
