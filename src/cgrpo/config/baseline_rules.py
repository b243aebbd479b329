"""Cross-field rules of the paper's baselines: expert demonstrations in the group (LUFFY)
and the fine-tuning objectives (RAFT, refinement / critique / critique-in-the-loop FT).

Registered into :data:`cgrpo.config.rules.RULES` on import (validate.py imports this
module), so their findings come with every other rule's.
"""

from __future__ import annotations

from cgrpo.config.rules import Finding, RuleResult, rule
from cgrpo.config.schema import Recipe

NEEDS_CRITIQUES = ("refinement_ft", "critique_ft", "citl_ft")


@rule("algorithm.objective")
def fine_tuning_has_what_it_trains_on(r: Recipe) -> RuleResult:
    a = r.algorithm
    if a.objective == "raft" and a.refinements_per_prompt:
        return Finding(
            "raft trains on the correct initial responses only: refinements would be "
            "critiqued and sampled for nothing",
            "set algorithm.refinements_per_prompt: 0 (or objective: citl_ft to train on "
            "correct refinements too)",
        )
    if a.objective in NEEDS_CRITIQUES and a.refinements_per_prompt < 1:
        return Finding(
            f"{a.objective} trains on critiques or refinements, which are made only with "
            "algorithm.refinements_per_prompt >= 1",
            "set algorithm.refinements_per_prompt: 1",
        )
    return None


@rule("algorithm.updates_per_step")
def fine_tuning_takes_one_step(r: Recipe) -> RuleResult:
    a = r.algorithm
    if a.objective != "policy_gradient" and a.updates_per_step != 1:
        return Finding(
            f"objective {a.objective} takes one cross-entropy step per rollout over every "
            f"row it keeps (their number varies step to step), got {a.updates_per_step}",
            "set algorithm.updates_per_step: 1",
        )
    return None


@rule("algorithm.fine_tune.critique_template")
def critique_template_fills(r: Recipe) -> RuleResult:
    if r.algorithm.objective != "critique_ft":
        return None
    template, found = r.algorithm.fine_tune.critique_template, []
    try:
        template.format(question="q", response="r")
    except (KeyError, IndexError, ValueError) as exc:
        found.append(Finding(
            f"cannot be filled: {exc!r}",
            "use only {question} and {response}; write {{ and }} for literal braces",
        ))  # fmt: skip
    for name in ("{question}", "{response}"):
        if name not in template:
            fix = "the critique prompt must show the question and the response"
            found.append(Finding(f"does not contain {name}", fix))
    return found


@rule("algorithm.demonstrations.gamma")
def demonstration_gamma_needs_shaping(r: Recipe) -> RuleResult:
    a = r.algorithm
    if a.demonstrations.gamma is not None and a.loss.shaping.mode != "p_over_p_plus_gamma":
        return Finding(
            f"has no effect with algorithm.loss.shaping.mode: {a.loss.shaping.mode} (gamma "
            "is the gamma of f(p) = p/(p+gamma))",
            "remove demonstrations.gamma, or set loss.shaping.mode: p_over_p_plus_gamma",
        )
    return None


@rule("algorithm.loss")
def fine_tuning_sets_no_policy_loss_term(r: Recipe) -> RuleResult:
    a = r.algorithm
    if a.objective == "policy_gradient":
        return None
    found = []
    for name in ("clip", "shaping", "aggregation", "normalizer", "tis_cap"):
        if name in a.loss.model_fields_set:
            found.append(Finding(
                f"has no effect with objective: {a.objective} (its step is the mean token "
                "cross-entropy of the kept rows: no clip, no shaping, a token mean)",
                f"remove algorithm.loss.{name}, or set objective: policy_gradient",
                path=f"algorithm.loss.{name}",
            ))  # fmt: skip
    return found


@rule("rollout.max_staleness")
def fine_tuning_is_not_pipelined(r: Recipe) -> RuleResult:
    """The pipeline's off-policy correction (the proximal ratio and its truncated
    importance weight) is the policy gradient's; a fine-tuning step has neither."""
    a = r.algorithm
    if r.rollout.max_staleness and a.objective != "policy_gradient":
        return Finding(
            f"{r.rollout.max_staleness} pipelines the policy gradient (decoupled PPO, "
            f"docs/pipeline.md); objective {a.objective} takes a cross-entropy step on the "
            "step's kept rows, which the pipeline's correction does not cover",
            "set rollout.max_staleness: 0, or objective: policy_gradient",
        )
    return None
