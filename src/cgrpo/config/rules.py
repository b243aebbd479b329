"""Cross-field recipe rules: checks that need several settings at once.

Each rule is a small function registered with :func:`rule`, which names the dotted path its
finding is reported at. A rule returns ``None`` when the recipe is fine, or one
:class:`Finding` (or a list of them) saying what is wrong and how to fix it. ``RULES`` is
the table, in the order the findings are printed; :func:`cross_issues` runs all of them, so
a user sees every problem at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from cgrpo.config.schema import Recipe, VLLMServerOptions
from cgrpo.errors import ConfigIssue


@dataclass(frozen=True)
class Finding:
    """What a rule found: the message, the fix, and a path when it differs from the rule's
    (a benchmark's index, say)."""

    message: str
    fix: str = ""
    path: str | None = None


RuleResult = Finding | list[Finding] | None


@dataclass(frozen=True)
class Rule:
    name: str
    path: str  # where its findings are reported (unless a finding names its own)
    check: Callable[[Recipe], RuleResult]

    def issues(self, recipe: Recipe) -> list[ConfigIssue]:
        found = self.check(recipe)
        found = [] if found is None else found if isinstance(found, list) else [found]
        return [ConfigIssue(f.path or self.path, f.message, f.fix) for f in found]


RULES: list[Rule] = []


def rule(path: str) -> Callable[[Callable[[Recipe], RuleResult]], Callable[[Recipe], RuleResult]]:
    """Add the decorated check to ``RULES``, reported at ``path``."""

    def add(check: Callable[[Recipe], RuleResult]) -> Callable[[Recipe], RuleResult]:
        RULES.append(Rule(check.__name__, path, check))
        return check

    return add


def cross_issues(recipe: Recipe) -> list[ConfigIssue]:
    """Every rule's findings, in table order."""
    return [issue for r in RULES for issue in r.issues(recipe)]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# -- evaluation ---------------------------------------------------------------------------


def _benchmark_labels(r: Recipe) -> list[str]:
    return [str(b.options.get("label") or b.name) for b in r.eval.benchmarks]


@rule("eval.benchmarks")
def benchmark_listed_twice(r: Recipe) -> RuleResult:
    labels = _benchmark_labels(r)
    return [
        Finding(f"{label} is listed twice (its metrics would mix)", "give one options.label",
                f"eval.benchmarks[{i}]")
        for i, label in enumerate(labels) if label in labels[:i]
    ]  # fmt: skip


@rule("train.keep_best")
def keep_best_is_logged(r: Recipe) -> RuleResult:
    """A train.keep_best that no evaluation would ever log: the best checkpoint would
    silently never be kept."""
    key = r.train.keep_best
    if key is None or not key.startswith("eval/"):
        return None
    if r.eval.every == 0:
        return Finding(f"{key} is never logged: evaluation is off", "set eval.every")
    labels = _benchmark_labels(r)
    name, _, metric = key[len("eval/") :].partition("/")
    known = [*labels, "avg", "avg_math"]
    if labels and (not metric or name not in known):
        return Finding(
            f"{key} is not an evaluation metric of this recipe",
            f"use eval/<benchmark>/<metric> with a benchmark among {', '.join(known)}, "
            "e.g. eval/avg/score",
        )
    return None


# -- group and batch shapes ---------------------------------------------------------------


@rule("algorithm.samples_per_prompt")
def grpo_needs_two_samples(r: Recipe) -> RuleResult:
    g, k = r.algorithm.samples_per_prompt, r.algorithm.refinements_per_prompt
    if k == 0 and g < 2 and r.algorithm.objective == "policy_gradient":
        return Finding(
            f"plain GRPO (K=0) needs G >= 2 samples per prompt, got {g}",
            "set samples_per_prompt to 2 or more, or refinements_per_prompt >= 1",
        )
    return None


@rule("algorithm.refinements_per_prompt")
def refinements_can_be_kept(r: Recipe) -> RuleResult:
    a = r.algorithm
    g, k = a.samples_per_prompt, a.refinements_per_prompt
    most = min(g, a.max_refinements_generated or g)
    if k >= 1 and k > most:
        return Finding(
            f"K={k} refinements cannot be kept: at most {most} are generated per prompt (one "
            "per initial response, capped by max_refinements_generated)",
            f"set refinements_per_prompt <= {most}",
        )
    return None


@rule("rollout.speculative_refinement")
def speculation_needs_failed_groups(r: Recipe) -> RuleResult:
    """Speculating is starting a group's refinements before knowing whether the group
    qualifies: only the paper's rule (failed_groups) waits for the whole group."""
    a = r.algorithm
    if not r.rollout.speculative_refinement:
        return None
    if a.refinements_per_prompt == 0:
        return Finding(
            "has no effect: nothing is refined (refinements_per_prompt: 0)",
            "remove it, or set algorithm.refinements_per_prompt >= 1",
        )
    if a.refine != "failed_groups":
        return Finding(
            f"has no effect with algorithm.refine: {a.refine} (every refinement there starts "
            "as soon as its response is verified)",
            "remove it, or use algorithm.refine: failed_groups",
        )
    if r.policy.name == "hf":
        return Finding(
            "has no effect with policy: hf (its groups go through the stages together, in "
            "the serial rollout's batches)",
            "remove it, or use policy: vllm or vllm-server",
        )
    return None


@rule("rollout.max_staleness")
def pipeline_needs_servers_and_correction(r: Recipe) -> RuleResult:
    """A pipelined rollout samples while the trainer updates: only where generation runs
    outside the training processes, and only with the off-policy correction it needs."""
    n = r.rollout.max_staleness
    if n == 0:
        return None
    if r.policy.name in ("hf", "vllm"):
        return Finding(
            f"{n} needs sampling outside the training processes; policy: {r.policy.name} "
            "samples on the trainer's own device, so it cannot sample while the trainer "
            "updates",
            "use policy: vllm-server (docs/vllm-server.md), or set rollout.max_staleness: 0",
        )
    found = []
    if r.algorithm.old_logprobs != "recompute":
        found.append(Finding(
            "the PPO ratio of a pipelined rollout is taken against the trainer's own "
            "log-probs before the update (the proximal policy), not the sampler's, which may "
            f"be up to {n} updates old",
            "set algorithm.old_logprobs: recompute",
            "algorithm.old_logprobs",
        ))  # fmt: skip
    if r.algorithm.loss.tis_cap is None:
        found.append(Finding(
            "rows sampled with older weights need the truncated importance weight between "
            "the proximal and the sampling policy (decoupled PPO, docs/pipeline.md)",
            "set algorithm.loss.tis_cap (2.0 is a common choice), or rollout.max_staleness: 0",
            "algorithm.loss.tis_cap",
        ))  # fmt: skip
    return found or None


@rule("algorithm.updates_per_step")
def mini_batches_hold_whole_groups(r: Recipe) -> RuleResult:
    a = r.algorithm
    if a.prompts_per_step % a.updates_per_step:
        return Finding(
            f"{a.prompts_per_step} prompts per step cannot be split into {a.updates_per_step} "
            "mini-batches of whole groups",
            f"use one of {_divisors(a.prompts_per_step)}",
        )
    return None


@rule("algorithm.micro_batch_size")
def micro_batches_divide_mini_batches(r: Recipe) -> RuleResult:
    a = r.algorithm
    if a.prompts_per_step % a.updates_per_step or a.objective != "policy_gradient":
        return None  # reported by mini_batches_hold_whole_groups; fine-tuning rows vary
    n = a.group_size
    rows = a.prompts_per_step // a.updates_per_step * n
    if a.micro_batch_tokens is not None:
        return None  # packed micro-batches are cut by tokens (micro_batch_size is refused)
    if a.micro_batch_size > rows or rows % a.micro_batch_size:
        return Finding(
            f"a mini-batch holds {rows} sequences (P/updates x N = {a.prompts_per_step}/"
            f"{a.updates_per_step} x {n}); {a.micro_batch_size} does not divide it",
            f"use one of {_divisors(rows)}",
        )
    return None


def _holds_longest_sequence(cap: int | None, budget: int) -> RuleResult:
    if cap is not None and cap < budget:
        return Finding(
            f"{cap} is less than model.max_length {budget}: the longest sequence would not "
            "fit a micro-batch of its own",
            f"set it to at least {budget}",
        )
    return None


@rule("algorithm.max_tokens_per_micro_batch")
def longest_sequence_fits_a_micro_batch(r: Recipe) -> RuleResult:
    return _holds_longest_sequence(r.algorithm.max_tokens_per_micro_batch, r.model.max_length)


@rule("algorithm.micro_batch_tokens")
def longest_sequence_fits_a_pack(r: Recipe) -> RuleResult:
    """Packed micro-batches never split a row."""
    return _holds_longest_sequence(r.algorithm.micro_batch_tokens, r.model.max_length)


# -- context budget and templates ---------------------------------------------------------


@rule("model.max_length")
def prompt_and_response_fit(r: Recipe) -> RuleResult:
    prompt, new, budget = (
        r.data.prompt.max_prompt_tokens,
        r.sampling.max_new_tokens,
        r.model.max_length,
    )
    if prompt + new > budget:
        return Finding(
            f"prompt ({prompt}) + response ({new}) = {prompt + new} tokens exceeds the "
            f"context budget {budget}",
            "raise model.max_length or lower data.prompt.max_prompt_tokens / "
            "sampling.max_new_tokens",
        )
    return None


@rule("refinement")
def refinement_prompt_fits(r: Recipe) -> RuleResult:
    """The template's own words and the chat framing are estimated without a tokenizer (~3
    characters per token); a prompt that still does not fit at run time is skipped and
    counted in refine/skipped_too_long."""
    if r.algorithm.refinements_per_prompt < 1:
        return None
    ref, prompt, new = r.refinement, r.data.prompt.max_prompt_tokens, r.sampling.max_new_tokens
    fixed = re.sub(r"\{(question|response|critique)\}", "", ref.template)
    framing = len(fixed) // 3 + (16 if r.data.prompt.chat_template else 0)
    need = prompt + ref.max_critique_tokens + ref.min_previous_response_tokens + new + framing
    if need > r.model.max_length:
        return Finding(
            f"a refinement prompt needs question ({prompt}) + previous response (>= "
            f"{ref.min_previous_response_tokens}) + critique ({ref.max_critique_tokens}) + "
            f"template and chat framing (~{framing}) + refinement ({new}) = {need} tokens, "
            f"over model.max_length {r.model.max_length}",
            "raise model.max_length or lower refinement.max_critique_tokens / "
            "min_previous_response_tokens",
        )
    return None


@rule("refinement.template")
def refinement_template_fills(r: Recipe) -> RuleResult:
    if r.algorithm.refinements_per_prompt < 1:
        return None
    template, found = r.refinement.template, []
    try:
        template.format(question="q", response="r", critique="c")
    except (KeyError, IndexError, ValueError) as exc:
        found.append(Finding(
            f"cannot be filled: {exc!r}",
            "use only {question}, {response}, {critique}; write {{ and }} for literal braces",
        ))  # fmt: skip
    if "{critique}" not in template:
        found.append(Finding("does not contain {critique}",
                             "the refinement prompt must show the critique"))  # fmt: skip
    return found


@rule("data.prompt.template")
def prompt_template_shows_question(r: Recipe) -> RuleResult:
    if "{question}" not in r.data.prompt.template:
        return Finding("does not contain {question}", "e.g. template: '{question}'")
    return None


# -- loss -----------------------------------------------------------------------------------


@rule("algorithm.loss.normalizer")
def normalizer_needs_token_sum(r: Recipe) -> RuleResult:
    loss = r.algorithm.loss
    if loss.normalizer != "auto" and loss.aggregation != "token_sum":
        return Finding(
            f"only used with aggregation 'token_sum' (got '{loss.aggregation}')",
            "remove it or set aggregation: token_sum",
        )
    return None


@rule("algorithm.loss.tis_cap")
def tis_needs_recomputed_logprobs(r: Recipe) -> RuleResult:
    if r.algorithm.loss.tis_cap is not None and r.algorithm.old_logprobs != "recompute":
        return Finding(
            "importance correction compares the trainer's recomputed log-probs with the "
            "sampler's; there is nothing to correct when the sampler's are used as old "
            "log-probs",
            "set algorithm.old_logprobs: recompute, or remove tis_cap",
        )
    return None


# -- vLLM servers (policy: vllm-server) -----------------------------------------------------


def _server_options(r: Recipe) -> VLLMServerOptions | None:
    """The vllm-server backend's options, or None (another backend, or options that the
    component pass already reports as invalid)."""
    if r.policy.name != "vllm-server":
        return None
    try:
        return VLLMServerOptions.model_validate(r.policy.options)
    except ValidationError:
        return None


@rule("policy.options.weight_sync")
def nccl_sync_needs_cuda(r: Recipe) -> RuleResult:
    o = _server_options(r)
    if o is not None and o.weight_sync == "nccl" and r.model.device == "cpu":
        return Finding(
            "nccl weight transfer runs from the trainer's GPU; with model.device: cpu there is "
            "none",
            "use weight_sync: filesystem (the default), or train on a GPU",
        )
    return None


@rule("policy.options.launch.max_model_len")
def launched_servers_hold_the_context(r: Recipe) -> RuleResult:
    o = _server_options(r)
    if o is None or o.launch is None or o.launch.max_model_len is None:
        return None
    if o.launch.max_model_len < r.model.max_length:
        return Finding(
            f"{o.launch.max_model_len} is less than model.max_length {r.model.max_length}: "
            "the servers would reject the longest prompts",
            f"set it to at least {r.model.max_length}, or remove it (default: model.max_length)",
        )
    return None


# -- distribution, run and model ------------------------------------------------------------


@rule("distributed.strategy")
def fsdp_without_lora(r: Recipe) -> RuleResult:
    if r.distributed.strategy == "fsdp" and r.model.lora is not None:
        return Finding(
            "fsdp with model.lora is not supported: LoRA's trainable state is a few megabytes "
            "and its frozen base is held in the compute dtype, so sharding buys little, and "
            "peft's adapter-disabled reference does not compose with FSDP's sharded forward",
            "use distributed.strategy: ddp with model.lora (each GPU holds the bf16 base), or "
            "remove model.lora to shard full training",
        )
    return None


@rule("policy.options")
def compiled_decode_needs_cuda(r: Recipe) -> RuleResult:
    """The hf backend's compiled decode captures its step in CUDA graphs."""
    options = r.policy.options or {}
    if r.policy.name == "hf" and options.get("decode") == "compiled" and r.model.device == "cpu":
        return Finding(
            "'compiled' captures the decode step in CUDA graphs, which needs CUDA, but "
            "model.device is cpu",
            "remove it (auto: compiled on CUDA, eager on CPU), or set it to eager",
            "policy.options.decode",
        )
    return None


@rule("run.memory_check")
def memory_check_needs_a_gpu(r: Recipe) -> RuleResult:
    if r.run.changes("memory_check") and r.model.device == "cpu":
        return Finding(
            "the memory plan is checked only on GPU; with model.device: cpu it would be ignored",
            "remove run.memory_check, or train on a GPU (model.device: auto or cuda)",
        )
    return None


@rule("train.steps")
def something_to_train(r: Recipe) -> RuleResult:
    if r.train.steps == 0 and r.sft.steps == 0:
        return Finding(
            "train.steps: 0 runs only the SFT warm-up, but sft.steps is 0 too: nothing to do",
            "set sft.steps > 0 (a warm-up-only run), or train.steps > 0",
        )
    return None


@rule("model.path")
def model_created_only_nearby(r: Recipe) -> RuleResult:
    """``model.create`` builds a random model where none exists: only under the working
    directory or ``run.output_dir`` (unless ``model.create.anywhere``), so a mistyped
    ``model.path=/models/Qwen3-8b`` is an error instead of a new random model."""
    create, target = r.model.create, Path(r.model.path).expanduser()
    if create is None or create.anywhere or (target / "config.json").exists():
        return None
    here = Path.cwd().resolve()
    allowed = [here, (here / r.run.output_dir).resolve()]
    resolved = (here / target).resolve()
    if any(resolved == a or a in resolved.parents for a in allowed):
        return None
    return Finding(
        f"{r.model.path} holds no model, and model.create would build a random tiny one "
        f"there, outside the working directory {here} and run.output_dir",
        "fix model.path if it names an existing model; to create a tiny model there on "
        "purpose set model.create.anywhere=true",
    )


@rule("model.path")
def model_directory_exists(r: Recipe) -> RuleResult:
    path = r.model.path
    local = path.startswith((".", "/", "~")) or Path(path).exists()
    if local and r.model.create is None and not Path(path).expanduser().is_dir():
        return Finding(
            f"directory not found: {path}",
            "fix the path, or add model.create to build a tiny model there",
        )
    return None


@rule("model.path")
def model_directory_holds_a_model(r: Recipe) -> RuleResult:
    """A directory without config.json failed only when the model was loaded, after the
    run directory was made; with model.create it is not replaced either."""
    path = Path(r.model.path).expanduser()
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    if r.model.create is None:
        return Finding(
            f"{r.model.path} holds no config.json: not a model directory",
            "point model.path at the directory with config.json and the weights (a "
            "checkpoint, a hub snapshot), or add model.create to build a tiny model there",
        )
    if any(path.iterdir()):
        return Finding(
            f"{r.model.path} holds files but no model, and model.create would not replace them",
            "remove the directory or point model.path elsewhere",
        )
    return None
