"""The recipe schema. Every section forbids unknown keys; every field documents itself.

Component sections (``policy``, ``critic``, ``verifier``, ``algorithm.advantage``,
``data.task``) name a registered component and give its ``options``, which that
component's own ``Options`` model validates (see :mod:`cgrpo.config.validate`). A bare
string is shorthand for ``{name: <string>}``, so ``policy=vllm`` on the command line works.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    def ignored_settings(self) -> dict[str, str]:
        """Fields that this section's other settings make meaningless, each with the reason
        and the fix. A recipe that sets one is a validation error naming its dotted path
        (:func:`cgrpo.config.validate.ignored_setting_issues`), and the resolved recipe
        leaves them out: no setting is accepted and then silently ignored. Component
        ``Options`` models (plugins too) may define the same method."""
        return {}

    def changes(self, name: str) -> bool:
        """Whether the recipe sets field ``name`` to something other than its default. A
        default written out (a run's saved recipe.yaml holds every one) asks for nothing,
        so a rule that refuses a setting as ignored refuses only a changed one."""
        field = type(self).model_fields[name]
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        return name in self.model_fields_set and getattr(self, name) != default


class ComponentSpec(Section):
    """A registered component by name, with its options."""

    name: str = Field(description="registered component name (see `cgrpo list`)")
    options: dict[str, Any] = Field(default_factory=dict, description="the component's options")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data


def component(name: str, description: str) -> Any:
    return Field(default_factory=lambda: ComponentSpec(name=name), description=description)


class TinyModelSpec(Section):
    """A tiny Qwen2 model and tokenizer created offline at ``model.path`` when it is missing
    (tests, the CPU quickstart). Nothing is downloaded."""

    hidden_size: int = Field(128, ge=32, description="model width")
    num_layers: int = Field(2, ge=1, description="transformer layers")
    num_heads: int = Field(4, ge=1, description="attention heads; head_dim = hidden/heads")
    num_kv_heads: int = Field(2, ge=1, description="key/value heads (GQA)")
    intermediate_size: int = Field(256, ge=8, description="MLP width")
    max_position_embeddings: int = Field(1024, ge=64, description="longest sequence")
    seed: int = Field(0, description="initialisation seed")
    anywhere: bool = Field(
        False,
        description="allow creating it outside the working directory and run.output_dir "
        "(off: a mistyped absolute model.path is an error, not a new random model)",
    )

    @model_validator(mode="after")
    def _heads(self) -> TinyModelSpec:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be divisible by num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be divisible by num_kv_heads")
        return self


class LoraSpec(Section):
    """LoRA adapters (peft): only the adapters are trained, checkpointed and resumed; the
    base model stays frozen in the compute dtype (``model.dtype``), the adapters float32."""

    r: int = Field(16, ge=1, description="adapter rank")
    alpha: float = Field(32.0, gt=0, description="scaling numerator: updates scale by alpha/r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="module names that get adapters (e.g. [q_proj, v_proj]), or 'all-linear' "
        "(every linear layer but the output layer)",
    )

    @field_validator("target_modules")
    @classmethod
    def _some_targets(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("name at least one module, or use 'all-linear'")
        return value


class ModelConfig(Section):
    """The policy model being trained."""

    path: str = Field(description="local directory (or hub id) of a transformers model")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="compute dtype of forward and backward (bfloat16 on GPU: matmuls under "
        "autocast); trainable weights, gradients and AdamW state stay float32 (master "
        "weights) either way, see docs/scaling.md",
    )
    device: str = Field("auto", description="'auto' (CUDA if present, else CPU), 'cpu', 'cuda:0'")
    max_length: int = Field(
        1024, ge=16, description="context budget: prompt + response never exceeds it"
    )
    gradient_checkpointing: bool = Field(False, description="trade compute for memory")
    trust_remote_code: bool = Field(False, description="allow custom model code")
    create: TinyModelSpec | None = Field(
        None, description="create a tiny model at `path` if it does not exist"
    )
    lora: LoraSpec | None = Field(
        None, description="train LoRA adapters instead of all weights (docs/scaling.md)"
    )

    @field_validator("dtype", mode="before")
    @classmethod
    def _no_float16(cls, value: Any) -> Any:
        if value == "float16":
            raise ValueError(
                "float16 compute needs dynamic loss scaling, which cgrpo does not implement; "
                "use bfloat16 (GPUs since Ampere) or float32"
            )
        return value


class PromptConfig(Section):
    """How a problem becomes the model's prompt."""

    system: str | None = Field(
        None,
        description="system message (in the chat template; before the text without one)",
    )
    template: str = Field("{question}", description="user message; {question} is replaced")
    suffix: str = Field(
        " Please reason step by step, and put your final answer within \\boxed{}.",
        description="appended to the user message",
    )
    chat_template: bool = Field(
        True,
        description="wrap with the tokenizer's chat template (when it has one); false = the "
        "plain text of system + template + suffix, as base models are usually prompted",
    )
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="passed to the tokenizer's chat template, e.g. {enable_thinking: false} "
        "for Qwen3",
    )
    max_prompt_tokens: int = Field(
        256, ge=1, description="longest prompt; longer problems are skipped and reported"
    )

    def ignored_settings(self) -> dict[str, str]:
        if not self.chat_template:
            return {"chat_template_kwargs": "is for the chat template (data.prompt."
                    "chat_template: false); set chat_template: true or remove it"}  # fmt: skip
        return {}


class DataConfig(Section):
    """Where problems come from and how they are ordered."""

    task: ComponentSpec = Field(description="a registered task (data source) with its options")
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    shuffle: bool = Field(True, description="reshuffle every epoch (seeded by run.seed)")


class SamplingConfig(Section):
    """How initial responses (and refinements) are sampled."""

    temperature: float = Field(1.0, gt=0, description="sampling temperature (paper: 1.0)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling; 1.0 = off")
    top_k: int = Field(0, ge=0, description="top-k sampling; 0 = off")
    max_new_tokens: int = Field(256, ge=1, description="longest response")


class ClipConfig(Section):
    """PPO ratio clipping on initial-response tokens."""

    mode: Literal["none", "symmetric", "asymmetric"] = Field(
        "symmetric",
        description="'symmetric' (paper, eps), 'asymmetric' (eps_low/eps_high), "
        "'none' (released code)",
    )
    eps: float = Field(0.2, gt=0, lt=1, description="clip range for 'symmetric'")
    eps_low: float = Field(0.2, gt=0, lt=1, description="lower clip for 'asymmetric'")
    eps_high: float = Field(0.28, gt=0, description="upper clip for 'asymmetric'")

    def ignored_settings(self) -> dict[str, str]:
        owner = {"eps": "symmetric", "eps_low": "asymmetric", "eps_high": "asymmetric"}
        return {
            name: f"is used only with clip.mode: {mode} (here mode: {self.mode}); set "
            f"mode: {mode}, or remove {name}"
            for name, mode in owner.items()
            if mode != self.mode
        }

    def bounds(self) -> tuple[float | None, float | None]:
        if self.mode == "none":
            return None, None
        if self.mode == "symmetric":
            return self.eps, self.eps
        return self.eps_low, self.eps_high


class ShapingConfig(Section):
    """The weight f of refinement tokens, loss -A * f(p) (docs/algorithm-options.md)."""

    mode: Literal["p_over_p_plus_gamma", "p", "none"] = Field(
        "p_over_p_plus_gamma",
        description="'p_over_p_plus_gamma' (paper, LUFFY: f = p/(p+gamma), gradient "
        "-A gamma p/(p+gamma)^2 grad log p); 'p' (the released code's "
        "off_policy_reshape=no_reshape, the ablation rows without shaping: f = p, gradient "
        "-A p grad log p); 'none' (no weight at all: value -A, gradient -A grad log p, the "
        "plain policy gradient, unlike 'p' not scaled down on improbable tokens)",
    )
    gamma: float = Field(0.1, gt=0, description="gamma of f(p) = p/(p+gamma) (paper: 0.1)")

    def ignored_settings(self) -> dict[str, str]:
        if self.mode != "p_over_p_plus_gamma":
            return {"gamma": f"has no effect with shaping.mode: {self.mode}; remove gamma, "
                    "or set mode: p_over_p_plus_gamma"}  # fmt: skip
        return {}


TermAggregation = Literal["token_mean", "micro_batch_token_mean", "same_as_policy"]
TERM_AGGREGATION = (
    "'token_mean' (the mean over the update's response tokens, whatever the "
    "micro-batching), 'micro_batch_token_mean' (the released code's verl: each micro-batch "
    "adds its own token mean, so the weight grows with the number of micro-batches; see "
    "micro_batch_token_budget) or 'same_as_policy' (the policy term's aggregation and "
    "normalizer)"
)


class LossSection(Section):
    """The policy loss (see cgrpo.algo.loss)."""

    clip: ClipConfig = Field(default_factory=ClipConfig)
    shaping: ShapingConfig = Field(default_factory=ShapingConfig)
    aggregation: Literal["token_mean", "seq_mean_token_mean", "token_sum"] = Field(
        "token_sum", description="token_sum = sum / constant normalizer (released code, Dr.GRPO)"
    )
    normalizer: int | Literal["auto"] = Field(
        "auto", description="constant divisor of token_sum; 'auto' = sampling.max_new_tokens"
    )
    entropy_coef: float = Field(0.001, ge=0, description="entropy bonus weight (paper: 0.001)")
    entropy_aggregation: TermAggregation = Field(
        "token_mean",
        description="how the entropy bonus averages (paper: 0.001 x the mean token entropy, "
        "token_mean; released code: micro_batch_token_mean): " + TERM_AGGREGATION,
    )
    kl_coef: float = Field(0.0, ge=0, description="KL to the initial model; 0 loads no reference")
    kl_estimator: Literal["k1", "k2", "k3"] = Field(
        "k3", description="KL estimator (k3 is verl's low_var_kl, which also clamps to +-10)"
    )
    kl_aggregation: Literal["token_mean", "micro_batch_token_mean", "same_as_policy"] = Field(
        "same_as_policy",
        description="how the KL penalty averages (default: inside the policy term, as in "
        "GRPO's objective; verl: micro_batch_token_mean): " + TERM_AGGREGATION,
    )
    micro_batch_token_budget: int | None = Field(
        None,
        ge=1,
        description="with micro_batch_token_mean: the micro-batches whose token means are "
        "taken are formed as the released code's verl forms them, not as this update does: "
        "per GPU, ceil(prompt + response tokens / budget) of them, rows balanced by the "
        "largest differencing method (its ppo_max_token_len_per_gpu; released code 32768); "
        "null = the update's own micro-batches",
    )
    tis_cap: float | None = Field(
        None,
        gt=0,
        description="truncated importance sampling for sampler/trainer mismatch: weight "
        "initial tokens by min(p_trainer/p_sampler, cap); needs old_logprobs: recompute",
    )

    def ignored_settings(self) -> dict[str, str]:
        out = {}
        for term in ("entropy", "kl"):
            if getattr(self, f"{term}_coef") == 0:
                out[f"{term}_aggregation"] = (
                    f"has no effect with {term}_coef: 0; set {term}_coef, or remove "
                    f"{term}_aggregation"
                )
        active = [
            getattr(self, f"{t}_aggregation")
            for t in ("entropy", "kl")
            if getattr(self, f"{t}_coef") != 0
        ]
        if "micro_batch_token_mean" not in active:
            out["micro_batch_token_budget"] = (
                "is used only by an entropy_aggregation or kl_aggregation of "
                "micro_batch_token_mean (with its coefficient above 0); set one, or remove "
                "micro_batch_token_budget"
            )
        return out


FINE_TUNE_OBJECTIVES = ("raft", "refinement_ft", "critique_ft", "citl_ft")


class DemonstrationConfig(Section):
    """Expert demonstrations in the group (LUFFY): the problem's reference solution (the
    task's ``solution_field``) joins its group as an off-policy member, shaped with
    f(p) = p/(p+gamma), never clipped, rewarded by the verifier like any member."""

    per_group: int = Field(
        0,
        ge=0,
        description="D: copies of the reference solution added to each group (0 = off; LUFFY: "
        "1); each copy is a member of its own, so D > 1 weighs the demonstration D times",
    )
    when: Literal["always", "failed_groups"] = Field(
        "always",
        description="'always' (LUFFY) or 'failed_groups': only to groups whose G samples all "
        "failed (the demonstration as a rescue, like Critique-GRPO's refinements)",
    )
    gamma: float | None = Field(
        None,
        gt=0,
        description="gamma of f(p) = p/(p+gamma) on demonstration tokens; null = "
        "algorithm.loss.shaping.gamma",
    )

    def ignored_settings(self) -> dict[str, str]:
        if self.per_group == 0:
            why = ("has no effect with per_group: 0 (no demonstration is added); set "
                   "per_group: 1, or remove it")  # fmt: skip
            return {"when": why, "gamma": why}
        return {}


class FineTuneConfig(Section):
    """Settings of the fine-tuning objectives (algorithm.objective other than
    policy_gradient)."""

    critique_template: str = Field(
        "{question}\n\nSolution:\n{response}\n\nCritique the solution: check each step, "
        "say whether the final answer is correct, and if not, what is wrong.",
        description="critique_ft: user message of the prompt the critique is learnt under; "
        "{question} and {response} are replaced (write {{ }} for literal braces)",
    )


class AlgorithmConfig(Section):
    """Group shapes and the Critique-GRPO options (docs/algorithm-options.md)."""

    objective: Literal["policy_gradient", "raft", "refinement_ft", "critique_ft", "citl_ft"] = (
        Field(
            "policy_gradient",
            description="what a step trains on: 'policy_gradient' (GRPO, Critique-GRPO, LUFFY) "
            "or a fine-tuning baseline, one cross-entropy step on this step's rollout: "
            "'raft' (the correct initial responses), 'refinement_ft' (the correct "
            "refinements, under the original question), 'critique_ft' (the critic's "
            "critiques, under a (question, response) prompt), 'citl_ft' (the correct initial "
            "responses and correct refinements: one critique-in-the-loop round per step)",
        )
    )

    prompts_per_step: int = Field(8, ge=1, description="P: prompts per training step")
    samples_per_prompt: int = Field(7, ge=1, description="G: initial samples per prompt")
    refinements_per_prompt: int = Field(
        1, ge=0, description="K: refinements kept per prompt; 0 = plain GRPO"
    )
    refine: Literal["all", "failed_groups", "failed_responses"] = Field(
        "failed_groups",
        description="which responses get a critique and a refinement: 'all' (released code), "
        "'failed_groups' (paper: prompts whose G samples all failed), 'failed_responses'",
    )
    max_refinements_generated: int | None = Field(
        None, ge=1, description="cap on refinements sampled per prompt (None = no cap)"
    )
    selection: Literal["correct_first", "random"] = Field(
        "correct_first",
        description="which K refinements a prompt keeps: 'correct_first' (paper, released "
        "code: the correct ones in response order, then `fallback`) or 'random' (K at random, "
        "correct or not: the paper's ablation row '+ one random refinement per group')",
    )
    fallback: Literal["first", "random", "none"] = Field(
        "random",
        description="kept refinement when none is correct: 'random' (paper), 'first' "
        "(released code), 'none' (keep none)",
    )
    advantage: ComponentSpec = component(
        "grpo", "advantage scheme: grpo (std_scaling none/group/batch), rloo, reinforce_pp"
    )
    loss: LossSection = Field(default_factory=LossSection)
    demonstrations: DemonstrationConfig = Field(default_factory=DemonstrationConfig)
    fine_tune: FineTuneConfig = Field(default_factory=FineTuneConfig)
    updates_per_step: int = Field(
        1, ge=1, description="optimizer updates per rollout (mini-batches; released code: 2)"
    )
    micro_batch_size: int = Field(8, ge=1, description="sequences per forward/backward pass")
    max_tokens_per_micro_batch: int | None = Field(
        None,
        ge=1,
        description="also cap a micro-batch by padded tokens (rows x longest prompt+response): "
        "short responses share a pass, long ones get their own (dynamic batching); must be "
        ">= model.max_length; null = cap by micro_batch_size only",
    )
    micro_batch_tokens: int | None = Field(
        None,
        ge=1,
        description="pack micro-batches without padding: rows concatenated up to this many "
        "tokens (a group's shared prompt counted once, rows never split), each row attending "
        "only to itself and its prompt; replaces micro_batch_size and "
        "max_tokens_per_micro_batch; must be >= model.max_length; null = padded micro-batches "
        "(docs/performance.md)",
    )
    logprob_chunk_tokens: int = Field(
        512,
        ge=1,
        description="response tokens projected to the vocabulary at once when computing "
        "log-probs and entropy (update, recompute, warm-up, vLLM sync probe); the (B, T, V) "
        "logits are never materialised",
    )
    old_logprobs: Literal["sampler", "recompute"] = Field(
        "sampler",
        description="'sampler': the sampler's log-probs are the old log-probs (exact for hf); "
        "'recompute': one extra forward pass with the trainer's model before the update",
    )

    @property
    def group_size(self) -> int:
        """N = G + K + D: the most members a group has."""
        return self.samples_per_prompt + self.refinements_per_prompt + self.demonstrations.per_group

    def ignored_settings(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.micro_batch_tokens is not None:
            why = ("has no effect with algorithm.micro_batch_tokens (packed micro-batches are "
                   "cut by tokens); remove it, or unset micro_batch_tokens")  # fmt: skip
            out |= {"micro_batch_size": why, "max_tokens_per_micro_batch": why}
        if self.objective != "policy_gradient":
            why = (f"has no effect with objective: {self.objective} (a cross-entropy step "
                   "on the step's correct samples: no advantage, no K to keep); remove it, "
                   "or set objective: policy_gradient")  # fmt: skip
            for key in ("selection", "fallback", "advantage", "demonstrations"):
                out[key] = why
            return out
        if self.refinements_per_prompt == 0:
            out["selection"] = ("has no effect with refinements_per_prompt: 0 (no "
                                "refinement is kept); remove selection, or set "
                                "refinements_per_prompt")  # fmt: skip
        if self.selection == "random":
            out["fallback"] = ("has no effect with selection: random (K refinements are "
                               "drawn whatever their verdicts); remove fallback, or set "
                               "selection: correct_first")  # fmt: skip
        out["fine_tune"] = ("is read only by a fine-tuning objective; remove it, or set "
                            "objective: raft, refinement_ft, critique_ft or citl_ft")  # fmt: skip
        return out


class RolloutConfig(Section):
    """How the rollout schedules its work (what is sampled is set by algorithm:)."""

    speculative_refinement: bool = Field(
        False,
        description="with refine: failed_groups, critique and refine a group's wrong "
        "responses as they are verified, before the group is complete, and cancel that work "
        "when a correct response arrives. Hides the refinement behind the group's slowest "
        "response; costs the cancelled sequences and critic requests (speculative/* "
        "metrics; a critique is paid once and never re-requested)",
    )
    max_staleness: int = Field(
        0,
        ge=0,
        description="N >= 1: the next steps' rollouts run while the current step updates "
        "(policy: vllm-server only), and a trained row may come from weights up to N updates "
        "old; older rows are dropped and their group resampled. Needs "
        "algorithm.old_logprobs: recompute and algorithm.loss.tis_cap (the correction, "
        "docs/pipeline.md). 0 = on-policy: every step samples with its own weights",
    )


class RefinementConfig(Section):
    """The refinement prompt: (question, previous response, critique) -> instruction."""

    template: str = Field(
        "{question}\n\nPrevious solution:\n{response}\n\nCritique:\n{critique}\n\n"
        "Using the critique, fix the errors in the previous solution. Reason step by step "
        "and put your final answer within \\boxed{{}}.",
        description="user message of the refinement prompt; {question}, {response}, "
        "{critique} are replaced (write {{ }} for literal braces)",
    )
    max_critique_tokens: int = Field(
        256, ge=1, description="a longer critique is cut to this many tokens"
    )
    min_previous_response_tokens: int = Field(
        32, ge=0, description="room kept for the previous response (its end is kept)"
    )


class OptimConfig(Section):
    """AdamW and the learning-rate schedule."""

    lr: float = Field(1e-6, gt=0, description="peak learning rate (paper: 1e-6)")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    eps: float = Field(1e-8, gt=0, description="AdamW eps")
    grad_clip: float | None = Field(1.0, gt=0, description="max grad norm; null = off")
    schedule: Literal["constant", "linear", "cosine"] = Field("constant", description="decay")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up optimizer steps")
    min_lr: float = Field(
        0.0,
        ge=0,
        description="the learning rate the linear or cosine decay ends at (0 = decays to "
        "zero), e.g. lr / 10",
    )

    @model_validator(mode="after")
    def _floor_below_peak(self) -> OptimConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr:g} is above lr {self.lr:g}; lower it")
        return self

    def ignored_settings(self) -> dict[str, str]:
        if self.schedule == "constant":
            return {"min_lr": "is where a decay ends (schedule: constant); set schedule: "
                              "cosine or linear, or remove it"}  # fmt: skip
        return {}


class SFTConfig(Section):
    """Optional supervised warm-up on reference solutions before RL (a paper baseline).
    Its optimizer: ``sft.optim`` when given (lr, betas, weight decay, warm-up, schedule over
    the warm-up's steps, grad clip); otherwise AdamW with ``optim``'s betas, eps, weight
    decay and gradient clipping at the constant ``sft.lr``."""

    steps: int = Field(0, ge=0, description="optimizer steps of warm-up; 0 = none")
    batch_size: int = Field(16, ge=1, description="problems per warm-up step")
    lr: float = Field(
        1e-3,
        gt=0,
        description="warm-up learning rate, constant (betas, eps, weight decay and "
        "grad_clip come from optim)",
    )
    refinement_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of warm-up examples that teach acting on a critique (refinement "
        "prompt with a wrong previous answer -> correct solution)",
    )
    task: ComponentSpec | None = Field(
        None, description="warm-up data; None = the training task (data.task)"
    )
    refinement_task: ComponentSpec | None = Field(
        None,
        description="data of the refinement examples (question, solution, answer); None = "
        "the warm-up data. E.g. plain examples of easy problems, refinement examples of hard",
    )
    wrong_answer: ComponentSpec = component(
        "other_solution",
        "the wrong previous response of a refinement example: other_solution (another "
        "problem's solution), perturbed_answer (the problem's own solution with its final "
        "answer changed: integers moved by 1-10, others replaced by another problem's "
        "answer), own_sample (the warm-up model's own sample, the recipe's sampling "
        "settings, when the verifier finds it wrong; else a perturbed answer), or a "
        "plugin's (register_wrong_answers)",
    )
    optim: OptimConfig | None = Field(
        None,
        description="the warm-up's own optimizer and schedule (same keys as optim; the "
        "schedule spans sft.steps); None = optim's AdamW settings at sft.lr, constant",
    )
    save_every: int = Field(
        0,
        ge=0,
        description="checkpoint the warm-up every N steps (checkpoints/sft/, newest kept); "
        "resume=auto continues a killed warm-up from it. 0 = none: a killed warm-up reruns "
        "from its start (to the same weights)",
    )

    def ignored_settings(self) -> dict[str, str]:
        if self.steps == 0:
            why = "has no effect without a warm-up (sft.steps: 0); set sft.steps"
            return {"optim": why, "refinement_task": why, "wrong_answer": why, "save_every": why}
        out = {}
        if self.optim is not None:
            out["lr"] = "is replaced by sft.optim.lr when sft.optim is given; remove it"
        if self.refinement_share == 0:
            why = "shapes refinement examples (sft.refinement_share: 0); set refinement_share"
            out.update(refinement_task=why, wrong_answer=why)
        return out


class TrainConfig(Section):
    """Length of the run and what it writes."""

    steps: int = Field(
        100,
        ge=0,
        description="training steps (one rollout each); 0 = only the SFT warm-up, saved as "
        "checkpoints/step-0",
    )
    save_every: int = Field(0, ge=0, description="checkpoint every N steps; 0 = only at the end")
    log_samples: int = Field(
        64, ge=0, description="sequences per step written to samples.jsonl (0 = none)"
    )
    keep_last: int | None = Field(
        None, ge=1, description="keep only the newest N checkpoints (None = keep all)"
    )
    keep_best: str | None = Field(
        None,
        description="also keep the checkpoint with the highest value of this metric, "
        "e.g. eval/accuracy",
    )
    max_nonfinite_steps: int = Field(
        3, ge=1, description="stop after this many steps in a row with non-finite loss/grads"
    )
    verifier_errors: Literal["stop", "tolerate"] = Field(
        "stop",
        description="a step in which every verification raised (a broken reward function): "
        "'stop' ends the run (exit 2) naming the error's file:line; 'tolerate' trains on "
        "with reward 0 for them. Errors are counted either way (verify/errors)",
    )


class EvalConfig(Section):
    """Evaluation during training and by ``cgrpo eval``: named benchmarks, or held-out
    problems of data.task / an eval.task (no critique at evaluation; docs/evaluation.md)."""

    every: int = Field(
        0,
        ge=0,
        description="evaluate every N RL steps and at the end, and every N warm-up steps "
        "(its metrics in sft_metrics.jsonl); 0 = off",
    )
    size: int | None = Field(
        None,
        ge=1,
        description="problems evaluated: of each benchmark or of eval.task its first N, with a "
        "warning when that cuts it (None = all); without either, N problems of data.task "
        "held out of training (None = 64)",
    )
    task: ComponentSpec | None = Field(
        None,
        description="a task to evaluate on; None = hold out `size` problems of data.task "
        "(removed from training)",
    )

    benchmarks: list[ComponentSpec] = Field(
        default_factory=list,
        description="registered benchmarks (cgrpo list benchmark), e.g. [math-500, {name: "
        "aime24, options: {path: data/aime24.parquet}}]; metrics eval/<name>/<metric> and "
        "the macro averages eval/avg/..., eval/avg_math/...",
    )
    at_start: bool = Field(
        True, description="also evaluate before the first step (step 0: every curve's baseline)"
    )
    k: int | None = Field(
        None,
        ge=1,
        description="samples per problem beyond the greedy one: with k > 1 also pass@k "
        "(unbiased estimator), avg@k and maj@k (a greedy benchmark's score stays greedy "
        "accuracy); None = each benchmark's own (1 for eval.task and held-out problems)",
    )
    temperature: float | None = Field(
        None, gt=0, description="temperature of the k samples (None = the benchmark's; 0.6)"
    )
    top_p: float | None = Field(
        None, gt=0, le=1, description="top-p of the k samples (None = the benchmark's; 0.95)"
    )

    def ignored_settings(self) -> dict[str, str]:
        names = ("size", "task", "at_start", "k", "temperature", "top_p")
        if self.every == 0:
            why = "has no effect while evaluation is off (eval.every: 0); set eval.every"
            # an empty list is how a recipe's benchmarks are switched off (eval.benchmarks=[])
            return {name: why for name in (*names, *(["benchmarks"] if self.benchmarks else []))}
        out: dict[str, str] = {}
        if self.benchmarks and self.task is not None:
            out["task"] = ("is replaced by eval.benchmarks; list the file as a benchmark "
                           "(name: rows, options: {path: ...}) or remove one")  # fmt: skip
        if self.k == 1 or (self.k is None and not self.benchmarks):
            why = "applies to the k samples per problem (eval.k: 1 = greedy only); set eval.k"
            out.update(temperature=why, top_p=why)
        return out

    def task_sampling(self) -> tuple[int, float, float]:
        """k, temperature and top-p for eval.task or held-out problems."""
        return self.k or 1, self.temperature or 0.6, self.top_p or 0.95

    @property
    def holdout_size(self) -> int:
        """Problems of data.task held out when there is no eval.task."""
        return 64 if self.size is None else self.size


class DistributedConfig(Section):
    """Several processes (``torchrun``): each samples its share of the prompts."""

    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="torch.distributed backend; auto = nccl on CUDA, else gloo"
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="ddp: every process holds the whole model, gradients are summed; fsdp: "
        "parameters, gradients and optimizer state sharded over the processes (FSDP2, "
        "docs/scaling.md)",
    )


class RunConfig(Section):
    """Naming, seeding and outputs."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9._-]+$", description="run directory name")
    output_dir: str = Field("runs", description="parent directory of run directories")
    seed: int = Field(0, description="seed of sampling, shuffling and the fallback choice")
    verify_workers: int = Field(
        0,
        ge=0,
        description="processes verifying responses (training and evaluation) for verifiers "
        "that opt in (math); 0 = the cores minus one, up to 8; 1 = in the trainer's process "
        "(a pipelined run's rollouts, off the main thread, still use one spawned worker)",
    )
    overwrite: bool = Field(False, description="replace an existing run directory")
    allow_recipe_change: bool = Field(
        False, description="resume even though the recipe differs from the saved one"
    )
    reproducible_sampling: bool = Field(
        False,
        description="seed every prompt's samples by (seed, step, prompt) so results do not "
        "depend on batching or on the number of processes (hf: per-row random streams, "
        "no slower; vllm: per-request seeds); with rollout.max_staleness N >= 1 it also "
        "fixes the lag: step t trains exactly rows sampled with the weights of step t - N",
    )
    console: Literal["auto", "rich", "plain"] = Field(
        "auto", description="live display: 'auto' = rich on a terminal, plain lines otherwise"
    )
    log_every: int = Field(
        1,
        ge=1,
        description="plain console: a line every N steps (and the last step, and any step "
        "with a warning); the rich view refreshes every step",
    )
    memory_check: Literal["enforce", "warn"] = Field(
        "enforce",
        description="on GPU, before loading: 'enforce' stops (exit 2) when the memory plan "
        "says the run will not fit the GPU, naming fixes; 'warn' prints the plan and goes on",
    )

    def ignored_settings(self) -> dict[str, str]:
        if self.console == "rich":
            return {"log_every": "has no effect with run.console: rich (the rich view refreshes "
                    "every step); remove it, or use console: auto or plain"}  # fmt: skip
        return {}


class Recipe(Section):
    """A whole training recipe."""

    run: RunConfig = Field(default_factory=RunConfig)
    resume: str | None = Field(
        None,
        description="'auto' = continue from the newest complete checkpoint of this run "
        "(start fresh if there is none), or a checkpoint directory",
    )
    model: ModelConfig
    data: DataConfig
    policy: ComponentSpec = component("hf", "sampling backend (`cgrpo list policy`)")
    critic: ComponentSpec = component("ground_truth", "who writes critiques (`cgrpo list critic`)")
    verifier: ComponentSpec = component("math", "reward function: math, exact, choice, plugins")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    refinement: RefinementConfig = Field(default_factory=RefinementConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    observers: list[ComponentSpec] = Field(
        default_factory=list,
        description="trackers from plugins, e.g. [{name: tensorboard}] (`cgrpo list observer`)",
    )


# dotted recipe path -> component kind, for options validation and `cgrpo check`
COMPONENT_PATHS: dict[str, str] = {
    "policy": "policy",
    "critic": "critic",
    "verifier": "verifier",
    "algorithm.advantage": "advantage",
    "data.task": "task",
    "eval.task": "task",
    "sft.task": "task",
    "sft.refinement_task": "task",
    "sft.wrong_answer": "wrong_answer",
}


# -- options of the vllm-server policy backend (cgrpo.builtins.policies.vllm_server); here
# because the recipe rules read them beside the other sections (config/rules.py)


class LocalServers(Section):
    """vLLM OpenAI-compatible servers that cgrpo starts on this machine for the run (one
    per port, on 127.0.0.1, serving ``model.path`` in ``model.dtype``) and stops at its end;
    for local runs and tests. Servers on other machines are started by you (docs/
    vllm-server.md) and listed in ``urls``."""

    ports: list[int] = Field(min_length=1, description="one server per port")
    python: str | None = Field(
        None,
        description="the Python interpreter with vLLM installed that runs the servers "
        "(`python -m vllm.entrypoints.openai.api_server`); default: the trainer's own",
    )
    max_model_len: int | None = Field(
        None, ge=16, description="the servers' context length; default: model.max_length"
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per server")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="GPU: share of each server's GPUs it may take"
    )
    kv_cache_memory_bytes: int | None = Field(
        None, ge=1, description="KV cache per server in bytes (CPU default: 256 MiB)"
    )
    threads: int = Field(
        1,
        ge=1,
        description="CPU: OpenMP threads per server (OMP_NUM_THREADS, unbound); keep servers "
        "x threads + the trainer's threads within the cores",
    )
    extra_args: list[str] = Field(
        default_factory=list, description="more command-line arguments for every server"
    )

    @field_validator("ports")
    @classmethod
    def _distinct(cls, ports: list[int]) -> list[int]:
        if len(set(ports)) < len(ports):
            raise ValueError("a port is listed twice; one server per port")
        return ports


class VLLMServerOptions(Section):
    """Rollouts from running vLLM servers (``policy: vllm-server``, docs/vllm-server.md)."""

    urls: list[str] = Field(
        default_factory=list,
        description="base URLs of running servers, e.g. [http://10.0.0.5:8000]; each must be "
        "started with VLLM_SERVER_DEV_MODE=1, --enable-scale-out and --logprobs-mode "
        "processed_logprobs",
    )
    launch: LocalServers | None = Field(
        None, description="start servers on this machine instead (local runs, tests)"
    )
    weight_sync: Literal["filesystem", "nccl"] = Field(
        "filesystem",
        description="filesystem: rank 0 writes safetensors to weights_dir and every server "
        "reloads them (works everywhere); nccl: vLLM's NCCL weight transfer from rank 0's GPU "
        "to each server's GPUs (CUDA only, servers started with --weight-transfer-config "
        '\'{"backend": "nccl"}\')',
    )
    weights_dir: str | None = Field(
        None,
        description="filesystem sync: where the weights are written; every server must read "
        "it at this same path (a shared filesystem); default: RUN_DIR/server-weights",
    )
    nccl_master_address: str | None = Field(
        None,
        description="nccl sync: this trainer's address as the servers reach it (default: its "
        "hostname)",
    )
    nccl_port: int = Field(
        29700, ge=1024, le=65000, description="nccl sync: server i rendezvous on nccl_port + i"
    )
    api_key_env: str | None = Field(
        None, description="environment variable holding the servers' --api-key, if any"
    )
    request_timeout_s: float = Field(
        600.0,
        gt=0,
        description="a request unanswered this long counts as a failed server: it is retried "
        "on the others",
    )
    startup_timeout_s: float = Field(
        600.0, gt=0, description="how long to wait for the servers to answer /health"
    )
    max_inflight_per_server: int = Field(
        256, ge=1, description="requests in flight per server; the rest wait in cgrpo"
    )
    sync_check: bool = Field(True, description="probe every server vs the trainer after a sync")
    sync_tolerance: float = Field(
        1e-2, gt=0, description="largest allowed |log-prob difference| of the probe"
    )

    @field_validator("urls")
    @classmethod
    def _http(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not a base URL; write e.g. http://10.0.0.5:8000")
        return urls

    @model_validator(mode="after")
    def _where(self) -> VLLMServerOptions:
        if bool(self.urls) == (self.launch is not None):
            raise ValueError(
                "give either urls (servers you started) or launch (cgrpo starts them here), "
                "exactly one of the two"
            )
        return self

    def ignored_settings(self) -> dict[str, str]:
        if self.weight_sync == "filesystem":
            why = "is for weight_sync: nccl; remove it, or set weight_sync: nccl"
            return {"nccl_master_address": why, "nccl_port": why}
        return {"weights_dir": "is for weight_sync: filesystem; remove it, or set "
                "weight_sync: filesystem"}  # fmt: skip
