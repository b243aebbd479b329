"""The paper's baselines, row by row: a demonstration (LUFFY) is an off-policy member of its
group, shaped with its own gamma and never clipped; RAFT trains only on correct responses;
refinement FT's target is the refinement under the original question; critique FT's target
is the critique under a (question, response) prompt; CITL-FT takes both correct kinds; the
fine-tuning step is the mean token cross-entropy. The numbers are worked out beside each.

The rollout test drives :func:`cgrpo.train.rollout.rollout` with the small fakes of
test_rollout_groups (sampler, verifier, critic: their order of events is not the point
here) and the real tiny tokenizer for the demonstration's tokens.
"""

import math

import pytest
import torch

from cgrpo.algo.loss import LossConfig, policy_loss
from cgrpo.algo.mixing import build_group, collate
from cgrpo.config.validate import validate_recipe
from cgrpo.errors import RecipeError
from cgrpo.train import demonstrations
from cgrpo.train.fine_tune import critique_target, fine_tune_loss, fine_tune_rows
from cgrpo.train.metrics import rollout_metrics, sample_lines
from cgrpo.train.rollout import Record, Rollout, RolloutSettings, rollout
from cgrpo.types import Completion, Critique, Problem, SamplingParams, Verdict
from tests.unit.test_rollout_groups import BatchPolicy, Critic, Prompts, Verifier

RIGHT, WRONG = Verdict(1.0, True), Verdict(0.0, False)


def comp(ids, text="t"):
    return Completion(list(ids), [-0.5] * len(ids), text, "stop")


# -- demonstrations: the row and the loss ------------------------------------------------------


def test_a_demonstration_row_is_off_policy_under_the_original_prompt():
    rows = build_group(
        3, [10, 11], [comp([5, 2])], [0.0], [comp([6, 2])], [1.0], [2],
        demonstrations=[Completion([7, 8, 2, 9], None, "sol", "stop")],
        demonstration_rewards=[1.0],
    )  # fmt: skip
    demo = rows[-1]
    assert (demo.group, demo.prompt_ids, demo.response_ids) == (
        3,
        [10, 11],
        [7, 8, 2],
    )  # cut at EOS
    assert demo.old_logprobs is None and demo.is_refinement and demo.is_demonstration
    assert [r.is_demonstration for r in rows] == [False, False, True]
    batch = collate(rows, pad_id=0)
    assert batch.demonstration_mask.tolist() == [[0, 0, 0], [0, 0, 0], [1, 1, 1]]
    assert batch.refinement_mask.tolist() == [[0, 0, 0], [1, 1, 0], [1, 1, 1]]


def test_a_demonstration_is_as_old_as_its_groups_samples():
    """No weights sampled a demonstration; a pipelined rollout (rollout.max_staleness)
    ages it with its group's oldest sample (versions 4 and 6: 4), so at trainer version 7
    it is 3 updates old, as a refinement of that group is."""
    from cgrpo.algo.staleness import row_staleness

    samples = [comp([5, 2]), comp([6, 2])]
    samples[0].weight_version, samples[1].weight_version = 6, 4
    demo = Completion([7, 2], None, "sol", "stop")
    rows = build_group(0, [10], samples, [0.0, 0.0], [], [], [2], [demo], [1.0])
    assert rows[-1].weight_version is None and rows[-1].group_weight_version == 4
    assert row_staleness(rows[-1], 7) == 3


def _loss_of(p_tokens, old, clip, demo_gamma, advantages):
    """Loss and d loss / d log p of three one-token rows: initial, refinement, demonstration."""
    lp = torch.tensor([[math.log(p)] for p in p_tokens], requires_grad=True)
    out = policy_loss(
        lp,
        torch.tensor([[math.log(old)], [0.0], [0.0]]),
        torch.tensor(advantages, dtype=torch.float64),
        torch.ones(3, 1),
        torch.tensor([[0.0], [1.0], [1.0]]),
        LossConfig(clip_low=clip, clip_high=clip, shaping_gamma=0.1, aggregation="token_sum",
                   normalizer=1.0, entropy_coef=0.0, demonstration_gamma=demo_gamma),
        demonstration_mask=torch.tensor([[0.0], [0.0], [1.0]]),
    )  # fmt: skip
    out.loss.backward()
    return out, lp.grad[:, 0].tolist()


def test_a_demonstration_is_shaped_with_its_own_gamma_and_never_clipped():
    # every token at p = 0.1; the initial one had p_old = 0.05: ratio 2, clipped at 1.2
    out, grad = _loss_of([0.1, 0.1, 0.1], 0.05, 0.2, 0.4, [1.0, 1.0, 1.0])
    # initial: clipped branch (-1 * 1.2), no gradient; refinement: -p/(p+0.1) = -0.5;
    # demonstration: -p/(p+0.4) = -0.2. Sum (normalizer 1) = -1.2 - 0.5 - 0.2 = -1.9
    assert out.metrics["loss/policy"] == pytest.approx(-1.9)
    # d/dlogp: refinement -0.1*0.1/0.2^2 = -0.25; demonstration -0.4*0.1/0.5^2 = -0.16
    assert grad == pytest.approx([0.0, -0.25, -0.16])
    assert out.metrics["clip/fraction"] == 1.0  # the initial token, only
    assert out.metrics["demonstration/shaped_weight_mean"] == pytest.approx(0.16)
    assert out.metrics["refine/shaped_weight_mean"] == pytest.approx(0.25)
    assert out.metrics["demonstration/token_prob_mean"] == pytest.approx(0.1)


def test_without_its_own_gamma_a_demonstration_takes_the_refinement_gamma():
    _, grad = _loss_of([0.1, 0.1, 0.1], 0.1, None, None, [0.0, 1.0, -1.0])
    assert grad == pytest.approx([0.0, -0.25, 0.25])  # -A * 0.25 for both, A = 1 and -1


def test_demonstrations_join_always_or_only_failed_groups():
    sol = Problem("1", "q", "5", solution="5")
    assert demonstrations.wanted(2, "always", sol, [RIGHT, WRONG]) == 2
    assert demonstrations.wanted(1, "failed_groups", sol, [RIGHT, WRONG]) == 0
    assert demonstrations.wanted(1, "failed_groups", sol, [WRONG, WRONG]) == 1
    assert demonstrations.wanted(1, "always", Problem("2", "q", "5"), [WRONG]) == 0  # none


def test_a_long_demonstration_is_cut_without_eos(tiny):
    _, tok = tiny
    ids = tok.encode("1 + 2 = 3, so the answer is 3", add_special_tokens=False)
    whole = demonstrations.completion_of(tok, "1 + 2 = 3, so the answer is 3", 64)
    assert whole.token_ids == [*ids, tok.eos_token_id] and whole.finish_reason == "stop"
    cut = demonstrations.completion_of(tok, "1 + 2 = 3, so the answer is 3", 3)
    assert cut.token_ids == ids[:3] and cut.finish_reason == "length"


class DemoPrompts(Prompts):
    def __init__(self, tok):
        self.tok = tok


def test_rollout_puts_the_demonstration_in_its_group_with_the_verifiers_reward(tiny):
    _, tok = tiny
    # group 0 samples right, group 1 wrong (test_rollout_groups.answers); the solutions
    # start with "right"/"wrong", so the fake verifier rewards them 1 and 0
    problems = [Problem(str(p), f"q{p}", "right", solution=s)
                for p, s in enumerate(["right 12", "wrong 7"])]  # fmt: skip
    ro = rollout(
        problems, [[0, 7, 8], [1, 7, 8]], policy=BatchPolicy([]), verifier=Verifier(),
        critic=Critic([]), prompts=DemoPrompts(tok), eos_ids=[2], rng_key="k",
        settings=RolloutSettings(3, 1, "failed_groups", None, "first",
                                 SamplingParams(n=3, max_new_tokens=16), demonstrations=1),
    )  # fmt: skip
    demos = [r for r in ro.records if r.kind == "demonstration"]
    assert [(r.group, r.verdict.score, r.completion.text) for r in demos] == [
        (0, 1.0, "right 12"), (1, 0.0, "wrong 7")
    ]  # fmt: skip
    # rows: group 0 = 3 initial + demo; group 1 = 3 initial + 1 refinement + demo
    assert [(r.group, r.is_refinement, r.is_demonstration) for r in ro.rows] == [
        (0, False, False), (0, False, False), (0, False, False), (0, True, True),
        (1, False, False), (1, False, False), (1, False, False), (1, True, False),
        (1, True, True),
    ]  # fmt: skip
    assert ro.rows[3].prompt_ids == [0, 7, 8]  # the original prompt
    assert ro.rows[3].response_ids == [*tok.encode("right 12", add_special_tokens=False),
                                       tok.eos_token_id]  # fmt: skip
    lines = sample_lines(1, ro, 100)
    assert sorted(x["kind"] for x in lines if x["kind"] == "demonstration") == ["demonstration"] * 2
    assert all(x["trained"] for x in lines if x["kind"] == "demonstration")
    m = rollout_metrics(ro)
    # group 0 (3 right) and group 1 (3 wrong, one refinement): mean demo reward (1 + 0) / 2
    assert (m["demonstration/count"], m["reward/demonstration_mean"]) == (2.0, 0.5)
    assert m["groups/refined_share"] == 0.5 and m["critique/valid_share"] == 1.0


# -- fine-tuning baselines: which rows ---------------------------------------------------------


def _step() -> Rollout:
    """One group: initial responses right [5, 2] and wrong [6, 2] (critiqued), the wrong
    one's refinement right [7, 2]; a second group: wrong [8, 2] (critiqued, its critique a
    fallback) refined wrong [9, 2]."""
    q0, q1 = Problem("a", "q0", "1"), Problem("b", "q1", "1")
    crit = Critique(text="wrong: it is 1", critic="c")
    fallback = Critique(text="incorrect", critic="c", fallback=True)
    recs = [
        Record(0, q0, "initial", comp([5, 2], "5"), RIGHT),
        Record(0, q0, "initial", comp([6, 2], "6"), WRONG, critique=crit),
        Record(1, q1, "initial", comp([8, 2], "8"), WRONG, critique=fallback),
        Record(0, q0, "refinement", comp([7, 2, 4], "7"), RIGHT, crit, parent=1),
        Record(1, q1, "refinement", comp([9, 2], "9"), WRONG, fallback, parent=2),
    ]
    return Rollout(rows=[], records=recs)


def prompt_of(problem):
    return {"a": [100], "b": [200]}[problem.id]


@pytest.mark.parametrize(
    ("objective", "expected", "trained"),
    [
        ("raft", [(0, [100], [5, 2])], [0]),  # the correct initial response only
        # the correct refinement, under the ORIGINAL prompt [100], cut at its EOS
        ("refinement_ft", [(0, [100], [7, 2])], [3]),
        ("citl_ft", [(0, [100], [5, 2]), (0, [100], [7, 2])], [0, 3]),
    ],
)
def test_fine_tuning_rows(objective, expected, trained):
    ro = _step()
    rows = fine_tune_rows(ro, objective, [2], prompt_of)
    assert [(r.group, r.prompt_ids, r.response_ids) for r in rows] == expected
    assert all(r.is_refinement and r.old_logprobs is None and r.advantage == 1.0 for r in rows)
    assert [i for i, rec in enumerate(ro.records) if rec.row is not None] == trained


def test_critique_ft_learns_the_critique_under_the_question_and_response(tiny):
    _, tok = tiny
    ro = _step()
    seen = []

    def critique_row(rec):
        seen.append(rec.completion.text)
        return [300, len(rec.completion.text)], critique_target(tok, rec.critique.text, 64)

    rows = fine_tune_rows(ro, "critique_ft", [2], prompt_of, critique_row)
    assert seen == ["6"]  # the critiqued initial response; the fallback is not learnt
    target = [*tok.encode("wrong: it is 1", add_special_tokens=False), tok.eos_token_id]
    assert [(r.prompt_ids, r.response_ids) for r in rows] == [([300, 1], target)]


def test_critique_prompt_shows_question_and_response_and_fits(tiny):
    from cgrpo.config.schema import FineTuneConfig, PromptConfig, RefinementConfig
    from cgrpo.model.prompts import PromptBuilder

    _, tok = tiny
    b = PromptBuilder(tok, PromptConfig(), RefinementConfig(), max_length=160, max_new_tokens=40)
    template = FineTuneConfig().critique_template
    ids = b.critique_ids(Problem("1", "What is 6 * 7?", "42"), "step " * 200 + "FINAL 41", template)
    assert len(ids) + 40 <= 160
    text = tok.decode(ids)
    assert "What is 6 * 7?" in text and "FINAL 41" in text and "Critique the solution" in text


def test_the_fine_tuning_step_is_the_mean_token_cross_entropy():
    # two rows of 1 and 2 tokens at p = 0.5, 0.25, 0.5: NLL mean = (ln2 + ln4 + ln2) / 3
    lp = torch.log(torch.tensor([[0.5, 0.0], [0.25, 0.5]]))
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    cfg = fine_tune_loss(LossConfig(entropy_coef=0.0, clip_low=0.2, normalizer=512.0))
    out = policy_loss(lp, None, torch.ones(2, dtype=torch.float64), mask, mask, cfg)
    assert out.metrics["loss/policy"] == pytest.approx(4 * math.log(2) / 3)
    assert (cfg.clip_low, cfg.aggregation, cfg.shaping) == (None, "token_mean", "log_p")


def test_a_rank_without_fine_tuning_rows_runs_a_zero_backward():
    """The empty row a rank without rows trains (loop.update) has no token: its loss is 0
    and still in the graph, so the backward (FSDP's collectives, the gradient all-reduce)
    runs and leaves a zero gradient, also without an entropy term."""
    lp = torch.zeros((1, 1), requires_grad=True)
    none = torch.zeros((1, 1))
    cfg = fine_tune_loss(LossConfig(entropy_coef=0.0))
    out = policy_loss(lp, None, torch.ones(1, dtype=torch.float64), none, none, cfg)
    out.loss.backward()
    assert out.loss.item() == 0.0 and lp.grad.tolist() == [[0.0]]


# -- recipe rules ---------------------------------------------------------------------------


def _issues(rollout=None, **algorithm):
    data = {"model": {"path": "m"}, "data": {"task": "arithmetic"}, "algorithm": algorithm}
    if rollout:
        data |= {"rollout": rollout, "policy": {"name": "vllm-server"}}
    try:
        validate_recipe(data)
    except RecipeError as exc:
        return {(i.path, i.message) for i in exc.problems}
    return set()


@pytest.mark.parametrize(
    ("algorithm", "path"),
    [
        ({"objective": "raft"}, "algorithm.objective"),  # K = 1 would be wasted
        ({"objective": "critique_ft", "refinements_per_prompt": 0}, "algorithm.objective"),
        ({"objective": "citl_ft", "updates_per_step": 2, "prompts_per_step": 8},
         "algorithm.updates_per_step"),
        ({"objective": "raft", "refinements_per_prompt": 0, "fallback": "first"},
         "algorithm.fallback"),  # ignored by a fine-tuning objective
        ({"demonstrations": {"per_group": 1, "gamma": 0.2}, "loss": {"shaping": {"mode": "none"}}},
         "algorithm.demonstrations.gamma"),
        ({"demonstrations": {"when": "failed_groups"}}, "algorithm.demonstrations.when"),
        ({"fine_tune": {"critique_template": "{question}"}}, "algorithm.fine_tune"),
        ({"objective": "raft", "refinements_per_prompt": 0}, "rollout.max_staleness"),
    ],
)  # fmt: skip
def test_settings_a_baseline_would_ignore_are_errors(algorithm, path):
    rollout = {"max_staleness": 1} if path == "rollout.max_staleness" else None
    assert path in {p for p, _ in _issues(rollout, **algorithm)}


def test_valid_baselines_pass():
    assert not _issues(objective="raft", refinements_per_prompt=0, samples_per_prompt=1)
    assert not _issues(demonstrations={"per_group": 1, "when": "failed_groups", "gamma": 0.2})
    assert not _issues(objective="critique_ft")
    # packed micro-batches carry the demonstration mask and the fine-tuning rows
    # (tests/unit/test_packing.py compares them with padded ones)
    packed = {"micro_batch_tokens": 4096, "refinements_per_prompt": 0}
    assert not _issues(demonstrations={"per_group": 1}, **packed)
    assert not _issues(objective="raft", **packed)
