"""benchmarks/rollout_tail.py's plan (forced lengths, failing groups) and its summary (the
keys issue 26 asks for), on hand-made numbers; the benchmark itself needs minutes."""

import importlib.util
from types import SimpleNamespace

from tests.helpers import REPO

spec = importlib.util.spec_from_file_location(
    "rollout_tail", REPO / "benchmarks" / "rollout_tail.py"
)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_the_plan_is_fixed_by_seed_and_step_with_one_long_response_in_eight():
    plan = bench.Plan(seed=0, samples=8, typical=64, factor=4)
    plan.share = 0.25
    problems = [SimpleNamespace(id=str(i)) for i in range(16)]
    prompts = [[i, 1, 2] for i in range(16)]
    plan.begin(3, problems, prompts)
    lengths = [n for ids in prompts for n in plan.lengths[tuple(ids)]]
    assert sorted(set(lengths)) == [64, 256] and lengths.count(256) == 16  # 128 / 8
    assert len(plan.failing) == 4
    first = (dict(plan.lengths), set(plan.failing))
    plan.begin(3, problems, prompts)
    assert (dict(plan.lengths), set(plan.failing)) == first
    # the n rows of a prompt take its lengths in order; an unknown prompt is a refinement
    assert plan.take(prompts[0], 8) == plan.lengths[(0, 1, 2)]
    assert plan.take([9, 9], 1) == [64] and plan.refinement_prompts == [[9, 9]]


def side(rollout, step, steps, idle):
    return {"rollout_s": rollout, "rollout_cpu_s": 1.0, "step_s": step, "step_cpu_s": 1.0,
            "refinements": 1.0, "decode_steps": steps, "idle_s": idle}  # fmt: skip


def test_the_summary_has_the_issues_keys_and_hand_computed_medians():
    pairs = []
    for rep, (grpo, cg) in enumerate([(2.0, 2.1), (2.0, 2.3), (4.0, 4.0)]):
        for critic, extra in (("indicative", 0.0), ("openai", 0.1)):
            pairs.append({
                "kind": "pair", "rep": rep, "failing_share": 0.25, "critic": critic,
                "grpo": side(grpo, grpo + 1, 256, 0.0),
                "cg": side(cg + extra, cg + extra + 1.5, 256, extra),
                "critique_alone_s": 0.5 if critic == "openai" else 0.0,
                "generate_alone_s": 0.5,
            })  # fmt: skip
    records = bench.summarise("vllm", 4, 4, pairs)
    indicative, openai = records
    assert set(bench.KEYS) <= set(indicative)
    # ratios 1.05, 1.15, 1.0: median 1.05; hidden: 1 - (CG - GRPO) / 0.5 s alone
    assert abs(indicative["rollout_ratio"] - 1.05) < 1e-9
    assert abs(indicative["hidden_share"] - 0.8) < 1e-9  # 0.8, 0.4, 1.0 -> median 0.8
    # the API critic added 0.1 s of wall and of engine idle to a 0.5 s round trip: 80% hidden
    assert abs(openai["critique_hidden_share"] - 0.8) < 1e-9
    assert abs(openai["critique_hidden_share_idle"] - 0.8) < 1e-9
    assert indicative["decode_step_ratio"] == 1.0
