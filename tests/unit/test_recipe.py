"""Recipe loading and validation: every problem at once, with dotted paths and hints."""

import pytest

from cgrpo.config import load_recipe
from cgrpo.errors import RecipeError

GOOD = """
run: {name: t}
model: {path: some-org/model, max_length: 512}
data:
  task: {name: arithmetic, options: {size: 10}}
  prompt: {max_prompt_tokens: 64}
sampling: {max_new_tokens: 64}
algorithm: {prompts_per_step: 4, samples_per_prompt: 7, refinements_per_prompt: 1,
            micro_batch_size: 8}
"""


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(tmp_path, text, *overrides):
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, text), overrides)
    return {p.path: p for p in err.value.problems}, err.value


def test_good_recipe_resolves_component_defaults(tmp_path):
    recipe, resolved = load_recipe(write(tmp_path, GOOD))
    assert recipe.algorithm.group_size == 8
    assert resolved["verifier"] == {
        "name": "math",
        "options": {
            "timeout_s": 5,
            "fallback": "expression",
            "float_rounding": 6,
            "answer_form": "auto",
        },
    }
    assert resolved["data"]["task"]["options"]["size"] == 10
    assert resolved["algorithm"]["advantage"]["options"]["std_scaling"] == "none"


def test_three_mistakes_are_reported_together(tmp_path):
    text = GOOD.replace("samples_per_prompt: 7", "samples_per_promt: 7") + (
        "critic: ground_truht\noptim: {lr: -1}\n"
    )
    found, err = problems(tmp_path, text)
    assert "algorithm.samples_per_promt" in found
    assert "samples_per_prompt" in found["algorithm.samples_per_promt"].hint
    assert "critic.name" in found and "ground_truth" in found["critic.name"].hint
    assert "optim.lr" in found
    assert "3 problems" in err.render()


def test_component_options_are_validated_by_the_component(tmp_path):
    text = GOOD + "verifier: {name: math, options: {timeout: 3, fallback: maybe}}\n"
    found, _ = problems(tmp_path, text)
    assert "verifier.options.timeout" in found
    assert "timeout_s" in found["verifier.options.timeout"].hint
    assert "verifier.options.fallback" in found


def test_overrides_interpolation_and_shorthand(tmp_path):
    text = (
        GOOD.replace("run: {name: t}", "run: {name: 'g${algorithm.samples_per_prompt}'}")
        + "train: {steps: 3}\n"
    )
    recipe, resolved = load_recipe(
        write(tmp_path, text),
        ["algorithm.samples_per_prompt=3", "critic=indicative", "train.steps=5"],
    )
    assert recipe.algorithm.samples_per_prompt == 3
    assert recipe.critic.name == "indicative" and resolved["run"]["name"] == "g3"
    assert recipe.train.steps == 5


def test_component_shorthand_replaces_old_options(tmp_path):
    text = GOOD + "verifier: {name: math, options: {timeout_s: 2}}\n"
    recipe, _ = load_recipe(write(tmp_path, text), ["verifier=exact"])
    assert recipe.verifier.name == "exact"
    assert "timeout_s" not in recipe.verifier.options


def test_switching_a_component_name_drops_the_old_options(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"question": "q", "answer": "1"}\n')
    recipe, _ = load_recipe(
        write(tmp_path, GOOD),
        ["data.task.name=jsonl", f"data.task.options.path={tmp_path / 'd.jsonl'}"],
    )
    assert recipe.data.task.name == "jsonl"
    assert "size" not in recipe.data.task.options


@pytest.mark.parametrize(
    "spelling",
    [
        ["data.task={name: jsonl, options: {path: PATH}}"],  # the whole value
        ["data={task: {name: jsonl, options: {path: PATH}}}"],  # the section that holds it
        ["data.task.name=jsonl", "data.task.options.path=PATH"],  # name, then options
        ["data.task=jsonl", "data.task.options.path=PATH"],  # shorthand, then options
    ],
)
def test_every_spelling_of_a_new_component_starts_from_its_own_options(tmp_path, caplog, spelling):
    """Switching data.task from arithmetic to jsonl drops arithmetic's options (size) in
    every spelling, and says so: they would be unknown keys of the new task."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "q", "answer": "1"}\n')
    overrides = [o.replace("PATH", str(data)) for o in spelling]
    with caplog.at_level("WARNING", logger="cgrpo"):
        recipe, _ = load_recipe(write(tmp_path, GOOD), overrides)
    assert recipe.data.task.name == "jsonl" and "size" not in recipe.data.task.options
    said = [r.getMessage() for r in caplog.records]
    assert any("data.task" in m and "arithmetic" in m and "size" in m for m in said), said


def test_a_whole_value_override_of_the_same_component_keeps_its_options(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="cgrpo"):
        recipe, _ = load_recipe(write(tmp_path, GOOD), ["data.task={options: {digits: 3}}"])
        recipe, _ = load_recipe(
            write(tmp_path, GOOD), ["data.task={name: arithmetic, options: {digits: 3}}"]
        )
    assert recipe.data.task.options["size"] == 10 and recipe.data.task.options["digits"] == 3
    assert not caplog.records


def test_bad_override_syntax_and_missing_interpolation(tmp_path):
    found, _ = problems(tmp_path, GOOD, "algorithm.samples_per_prompt")
    assert "algorithm.samples_per_prompt" in found
    found, _ = problems(tmp_path, GOOD.replace("run: {name: t}", "run: {name: '${nope.key}'}"))
    assert any("interpolation" in p.message for p in found.values())


@pytest.mark.parametrize(
    "override",
    ["train.steps=[5", 'run.name="unterminated', "algorithm.loss={a: 1", "algorithm={"],
)
def test_override_that_is_not_valid_yaml_is_a_recipe_error(tmp_path, override):
    """Not a yaml ParserError traceback: a recipe error naming the override (exit 2)."""
    found, _ = problems(tmp_path, GOOD, override)
    key = override.partition("=")[0]
    assert key in found and "not valid YAML" in found[key].message


def test_missing_extends_names_the_recipe_that_holds_it(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: no-such-base.yaml\nrun: {name: t}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(child)
    assert err.value.source == str(child)
    [issue] = err.value.problems
    assert issue.path == "extends" and "no-such-base.yaml" in issue.message


def test_run_rejects_a_bad_recipe_before_importing_torch():
    """`cgrpo run` validates first: a bad recipe costs about a second, as with `check`."""
    import subprocess
    import sys

    from tests.helpers import REPO

    code = (
        "import sys; from cgrpo.cli.main import main; "
        f"rc = main(['run', {str(REPO / 'recipes' / 'quickstart-cpu.yaml')!r}, 'train.steps=-1']); "
        "print(rc, 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["2", "False", "False"], out.stdout + out.stderr


def test_model_create_never_builds_at_a_mistyped_path_outside(tmp_path, monkeypatch):
    """model.path=/nonexistent on the quickstart used to create and train a random tiny
    model at the filesystem root; now it is a recipe error unless asked for."""
    from tests.helpers import REPO

    quickstart = REPO / "recipes" / "quickstart-cpu.yaml"
    monkeypatch.chdir(tmp_path)
    outside = tmp_path.parent / "elsewhere-model"
    with pytest.raises(RecipeError) as err:
        load_recipe(quickstart, [f"model.path={outside}"])
    [issue] = err.value.problems
    assert issue.path == "model.path" and "model.create.anywhere" in issue.hint
    load_recipe(quickstart, [f"model.path={outside}", "model.create.anywhere=true"])
    load_recipe(quickstart, ["model.path=./models/tiny"])  # under the working directory
    load_recipe(quickstart, ["run.output_dir=/tmp/x-runs", "model.path=/tmp/x-runs/tiny"])


def test_memory_check_on_cpu_is_an_error_not_ignored(tmp_path):
    found, _ = problems(tmp_path, GOOD, "model.device=cpu", "run.memory_check=warn")
    assert "run.memory_check" in found and "only on GPU" in found["run.memory_check"].message
    load_recipe(write(tmp_path, GOOD), ["run.memory_check=warn"])  # auto: a GPU may be there


def test_missing_file_and_yaml_syntax_error(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "absent.yaml")
    with pytest.raises(RecipeError, match="YAML"):
        load_recipe(write(tmp_path, "model: [unclosed\n"))


@pytest.mark.parametrize(
    "override,path,needle",
    [
        (
            ["algorithm.samples_per_prompt=1", "algorithm.refinements_per_prompt=0"],
            "algorithm.samples_per_prompt",
            "G >= 2",
        ),
        (["algorithm.refinements_per_prompt=8"], "algorithm.refinements_per_prompt", "at most 7"),
        (
            ["algorithm.max_refinements_generated=2", "algorithm.refinements_per_prompt=3"],
            "algorithm.refinements_per_prompt",
            "at most 2",
        ),
        (["algorithm.updates_per_step=3"], "algorithm.updates_per_step", "use one of [1, 2, 4]"),
        (["algorithm.micro_batch_size=5"], "algorithm.micro_batch_size", "does not divide"),
        (["model.max_length=100"], "model.max_length", "exceeds the context budget"),
        (["refinement.max_critique_tokens=400"], "refinement", "over model.max_length"),
        (["refinement.template='{question} {response}'"], "refinement.template", "{critique}"),
        (["refinement.template='{question} {critique} {bad}'"], "refinement.template", "bad"),
        (
            ["algorithm.loss.aggregation=token_mean", "algorithm.loss.normalizer=100"],
            "algorithm.loss.normalizer",
            "token_sum",
        ),
        (["model.path=./does/not/exist"], "model.path", "not found"),
        (["algorithm.loss.tis_cap=2"], "algorithm.loss.tis_cap", "recompute"),
        (
            ["algorithm.max_tokens_per_micro_batch=511"],
            "algorithm.max_tokens_per_micro_batch",
            "at least 512",
        ),
        (["algorithm.micro_batch_tokens=511"], "algorithm.micro_batch_tokens", "at least 512"),
        (["algorithm.micro_batch_tokens=4096"], "algorithm.micro_batch_size", "no effect"),
        (
            ["model.device=cpu", "policy.options.decode=compiled"],
            "policy.options.decode",
            "needs CUDA",
        ),
        (["model.dtype=float16"], "model.dtype", "loss scaling"),
        (["model.lora.target_modules=[]"], "model.lora.target_modules", "at least one"),
    ],
)
def test_cross_field_checks(tmp_path, override, path, needle):
    found, _ = problems(tmp_path, GOOD, *override)
    assert path in found, found
    assert needle in found[path].message + found[path].hint


def test_a_model_directory_without_a_model_is_refused_before_anything_runs(tmp_path, monkeypatch):
    """cgrpo run failed on it only when loading, after making the run directory."""
    monkeypatch.chdir(tmp_path)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("not a model")
    found, _ = problems(tmp_path, GOOD, f"model.path={notes}")
    assert "holds no config.json" in found["model.path"].message
    quick = tmp_path / "q.yaml"
    quick.write_text(GOOD.replace("model: {path: some-org/model,", "model: {create: {},"))
    found, _ = problems(tmp_path, quick.read_text(), f"model.path={notes}")
    assert "model.create would not replace" in found["model.path"].message
    load_recipe(quick, [f"model.path={tmp_path / 'empty'}"])  # created there: fine


def test_warm_up_checkpoints_under_fsdp_are_a_setting_like_any_other(tmp_path):
    recipe, _ = load_recipe(
        write(tmp_path, GOOD), ["sft.steps=10", "sft.save_every=5", "distributed.strategy=fsdp"]
    )
    assert recipe.sft.save_every == 5


def test_zero_or_negative_k_with_refinement_and_k_ge_n(tmp_path):
    found, _ = problems(tmp_path, GOOD, "algorithm.refinements_per_prompt=-1")
    assert "algorithm.refinements_per_prompt" in found
    # K >= N means G <= 0
    found, _ = problems(tmp_path, GOOD, "algorithm.samples_per_prompt=0")
    assert "algorithm.samples_per_prompt" in found


def test_secrets_are_refused_and_env_var_names_are_fine(tmp_path):
    found, _ = problems(
        tmp_path, GOOD + "critic: {name: ground_truth, options: {api_key: sk-123}}\n"
    )
    assert "critic.options.api_key" in found
    assert "environment variable" in found["critic.options.api_key"].hint


def test_extends_merges_a_base_recipe(tmp_path):
    write(tmp_path, GOOD, "base.yaml")
    child = write(tmp_path, "extends: base.yaml\nalgorithm: {samples_per_prompt: 3}\n", "c.yaml")
    recipe, _ = load_recipe(child)
    assert recipe.algorithm.samples_per_prompt == 3
    assert recipe.model.max_length == 512


def a_model_dir(tmp_path):
    """A stand-in model directory (a config.json is what validation looks for)."""
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    return model


@pytest.mark.parametrize(
    "name",
    [
        "quickstart-cpu",
        "quickstart-lora-cpu",
        "api-critic-cpu",
        "paper-qwen3-8b",
        "paper-qwen3-8b-servers",
        "released-code-qwen3-8b",
        "weak-to-strong",
    ],
)
def test_shipped_recipes_validate(tmp_path, name):
    from tests.helpers import REPO

    data = tmp_path / "train.jsonl"
    data.write_text('{"problem": "1+1?", "answer": "2"}\n')
    overrides = (
        [] if name.endswith("-cpu") else ["model.path=org/model", f"data.task.options.path={data}"]
    )
    if name == "quickstart-lora-cpu":  # its base is the quickstart's warm-up checkpoint
        overrides = [f"model.path={a_model_dir(tmp_path)}"]
    if name == "weak-to-strong":  # the small critic's directory is a placeholder too
        overrides.append(f"critic.options.path={tmp_path}")
    recipe, _ = load_recipe(REPO / "recipes" / f"{name}.yaml", overrides)
    assert recipe.algorithm.refinements_per_prompt == 1


def test_released_code_recipe_differs_from_the_paper_where_the_code_does(tmp_path):
    from tests.helpers import REPO

    data = tmp_path / "train.jsonl"
    data.write_text('{"problem": "1+1?", "answer": "2"}\n')
    ov = ["model.path=org/model", f"data.task.options.path={data}"]
    paper, _ = load_recipe(REPO / "recipes" / "paper-qwen3-8b.yaml", ov)
    code, _ = load_recipe(REPO / "recipes" / "released-code-qwen3-8b.yaml", ov)
    assert (paper.algorithm.refine, code.algorithm.refine) == ("failed_groups", "all")
    assert (paper.algorithm.fallback, code.algorithm.fallback) == ("random", "first")
    assert code.algorithm.advantage.options["std_scaling"] == "group"
    assert paper.algorithm.advantage.options["std_scaling"] == "none"
    assert (paper.algorithm.loss.clip.mode, code.algorithm.loss.clip.mode) == ("symmetric", "none")


def test_recipe_reference_doc_is_current():
    from cgrpo.config.reference import render
    from tests.helpers import REPO

    committed = (REPO / "docs" / "recipe-reference.md").read_text()
    assert committed == render(), (
        "docs/recipe-reference.md is stale: python -m cgrpo.config.reference > "
        "docs/recipe-reference.md"
    )


def test_component_shorthand_then_options_override(tmp_path):
    recipe, _ = load_recipe(
        write(tmp_path, GOOD + "critic: indicative\n"),
        ["verifier=exact", "verifier.options.case_sensitive=true"],
    )
    assert recipe.verifier.name == "exact" and recipe.verifier.options["case_sensitive"] is True
    assert recipe.critic.name == "indicative"


@pytest.mark.parametrize(
    "overrides, path",
    [
        (["algorithm.loss.clip={mode: symmetric, eps_high: 0.28}"], "algorithm.loss.clip.eps_high"),
        (["algorithm.loss.clip.eps_low=0.1"], "algorithm.loss.clip.eps_low"),
        (["algorithm.loss.clip={mode: asymmetric, eps: 0.3}"], "algorithm.loss.clip.eps"),
        (["algorithm.loss.clip={mode: none, eps: 0.3}"], "algorithm.loss.clip.eps"),
        (["algorithm.loss.shaping={mode: none, gamma: 0.5}"], "algorithm.loss.shaping.gamma"),
        (["algorithm.loss.shaping={mode: p, gamma: 0.5}"], "algorithm.loss.shaping.gamma"),
        (
            ["algorithm.loss.entropy_coef=0", "algorithm.loss.entropy_aggregation=token_mean"],
            "algorithm.loss.entropy_aggregation",
        ),
        (["algorithm.loss.kl_aggregation=token_mean"], "algorithm.loss.kl_aggregation"),
        (
            ["algorithm.loss.micro_batch_token_budget=4096"],
            "algorithm.loss.micro_batch_token_budget",
        ),
        (["algorithm.selection=random", "algorithm.fallback=first"], "algorithm.fallback"),
        (
            [
                "algorithm.refinements_per_prompt=0",
                "algorithm.samples_per_prompt=8",
                "algorithm.selection=random",
            ],
            "algorithm.selection",
        ),
        (["eval.size=16"], "eval.size"),
        (["eval.task=arithmetic"], "eval.task"),
        (["eval.at_start=false"], "eval.at_start"),
        (["eval.every=5", "eval.temperature=1.0"], "eval.temperature"),
        (["run.console=rich", "run.log_every=10"], "run.log_every"),
        (["sft.optim={lr: 0.001}"], "sft.optim"),
        (["sft.save_every=5"], "sft.save_every"),
        (["verifier=exact", "run.verify_workers=2"], "run.verify_workers"),
        (
            ["critic={name: ground_truth, options: {template: 'ans {answer}', correct: y}}"],
            "critic.options.correct",
        ),
    ],
)
def test_a_setting_the_others_make_meaningless_is_an_error(tmp_path, overrides, path):
    """Each of these was accepted and silently ignored before (DAPO's clip-higher asked
    for as clip.eps_high under the default symmetric mode got symmetric 0.2)."""
    found, _ = problems(tmp_path, GOOD, *overrides)
    assert list(found) == [path], found
    assert found[path].hint  # names the mode to set or says to remove it


def test_a_setting_that_its_mode_uses_is_fine_and_defaults_never_count(tmp_path):
    recipe, resolved = load_recipe(
        write(tmp_path, GOOD),
        ["algorithm.loss.clip={mode: asymmetric, eps_low: 0.2, eps_high: 0.28}", "eval.every=5"],
    )
    assert recipe.algorithm.loss.clip.bounds() == (0.2, 0.28)
    assert resolved["algorithm"]["loss"]["clip"] == {
        "mode": "asymmetric",
        "eps_low": 0.2,
        "eps_high": 0.28,
    }


def test_the_resolved_recipe_a_run_saves_validates_again(tmp_path):
    """recipe.yaml in a run directory holds every default but none that its settings make
    meaningless, so running it as it is reproduces the run instead of failing."""
    import yaml

    from tests.helpers import REPO

    data = tmp_path / "train.jsonl"
    data.write_text('{"problem": "1+1?", "answer": "2"}\n')
    _, resolved = load_recipe(
        REPO / "recipes" / "released-code-qwen3-8b.yaml",
        ["model.path=org/model", f"data.task.options.path={data}"],
    )
    assert resolved["algorithm"]["loss"]["clip"] == {"mode": "none"}
    valid = resolved["eval"]["benchmarks"][0]
    assert valid["name"] == "verl" and "dataset" not in valid["options"]  # a local path
    # k 1, but the temperature samples the repeated rows (repeats: samples): kept
    assert valid["options"]["temperature"] == 0.6
    again, _ = load_recipe(write(tmp_path, yaml.safe_dump(resolved), "resolved.yaml"))
    assert again.algorithm.loss.clip.mode == "none"


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.device=cpu"],  # run.memory_check: enforce is written, on a CPU machine
        ["verifier=exact"],  # run.verify_workers: 0 is written, with no pooled verifier
        ["model.device=cpu", "verifier=exact", "critic=indicative", "sft.steps=0"],
    ],
)
def test_a_saved_recipe_with_every_default_written_out_validates_again(tmp_path, overrides):
    """A run writes every default into its recipe.yaml; settings left at their defaults
    must not be refused as ignored when that file is checked, evaluated or rerun."""
    import yaml

    from tests.helpers import REPO

    _, resolved = load_recipe(REPO / "recipes" / "quickstart-cpu.yaml", overrides)
    assert resolved["run"]["memory_check"] == "enforce" and resolved["run"]["verify_workers"] == 0
    load_recipe(write(tmp_path, yaml.safe_dump(resolved), "saved.yaml"))


def test_switching_to_random_selection_drops_an_inherited_fallback(tmp_path):
    """``fallback`` means nothing once refinements are kept at random: a child recipe or an
    override that switches ``selection`` to random drops the one it inherits (the released
    code's ``fallback: first``) instead of failing on it; giving both is still an error."""
    write(tmp_path, GOOD, "base0.yaml")
    write(tmp_path, "extends: base0.yaml\nalgorithm: {fallback: first}\n", "base.yaml")
    child = write(tmp_path, "extends: base.yaml\nalgorithm: {selection: random}\n", "c.yaml")
    recipe, resolved = load_recipe(child)
    assert recipe.algorithm.selection == "random" and "fallback" not in resolved["algorithm"]
    recipe, _ = load_recipe(tmp_path / "base.yaml", ["algorithm.selection=random"])
    assert recipe.algorithm.selection == "random"
    back, _ = load_recipe(child, ["algorithm.selection=correct_first"])
    assert back.algorithm.fallback == "random"  # the default: the parent's was dropped
    # overrides apply in order: switching to random last drops the fallback given first
    ok, _ = load_recipe(
        write(tmp_path, GOOD), ["algorithm.fallback=first", "algorithm.selection=random"]
    )
    assert ok.algorithm.selection == "random"


def test_extends_switching_a_mode_or_a_name_drops_what_belonged_to_the_old_one(tmp_path, caplog):
    write(tmp_path, GOOD, "base0.yaml")
    write(
        tmp_path,
        "extends: base0.yaml\n"
        "algorithm: {loss: {clip: {mode: asymmetric, eps_low: 0.1, eps_high: 0.3}}}\n"
        "critic: {name: openai, options: {model: gpt-x, max_tokens: 100}}\n",
        "base.yaml",
    )
    child = write(
        tmp_path,
        "extends: base.yaml\nalgorithm: {loss: {clip: {mode: symmetric}}}\n"
        "critic: {name: ground_truth}\n",
        "c.yaml",
    )
    with caplog.at_level("WARNING", logger="cgrpo"):
        recipe, _ = load_recipe(child)
    assert recipe.algorithm.loss.clip.bounds() == (0.2, 0.2)
    assert recipe.critic.name == "ground_truth"
    assert (
        "c.yaml (extends base.yaml) switches critic from openai to ground_truth: the "
        "options of openai were dropped (max_tokens, model)" in caplog.text
    )
    same = write(tmp_path, "extends: base.yaml\nalgorithm: {loss: {clip: {eps_high: 0.4}}}\n")
    assert load_recipe(same)[0].algorithm.loss.clip.bounds() == (0.1, 0.4)  # merged as before


def test_sft_optim_in_a_child_or_an_override_replaces_the_inherited_sft_lr(tmp_path):
    write(tmp_path, GOOD + "sft: {steps: 10, lr: 2.0e-3}\n", "base.yaml")
    child = write(tmp_path, "extends: base.yaml\nsft: {optim: {lr: 5.0e-4}}\n", "c.yaml")
    recipe, _ = load_recipe(child)
    assert recipe.sft.optim.lr == 5e-4 and "lr" not in recipe.sft.model_fields_set
    recipe, _ = load_recipe(tmp_path / "base.yaml", ["sft.optim.schedule=cosine"])
    assert recipe.sft.optim.schedule == "cosine" and "lr" not in recipe.sft.model_fields_set
    # both in one file is still a contradiction, and so is sft.lr after sft.optim
    found, _ = problems(tmp_path, GOOD + "sft: {steps: 10, lr: 2.0e-3, optim: {lr: 1.0e-3}}\n")
    assert "sft.lr" in found
    found, _ = problems(tmp_path, GOOD, "sft.steps=10", "sft.optim.lr=1e-3", "sft.lr=2e-3")
    assert "sft.lr" in found


def test_null_takes_back_an_inherited_section_that_would_be_ignored(tmp_path):
    base = write(tmp_path, GOOD + "sft: {steps: 10, optim: {lr: 1.0e-3}}\n", "base.yaml")
    found, _ = problems(tmp_path, GOOD + "sft: {steps: 0, optim: {lr: 1.0e-3}}\n")
    assert "sft.optim" in found  # a warm-up's optimizer without a warm-up is refused
    recipe, _ = load_recipe(base, ["sft.steps=0", "sft.optim=null"])
    assert recipe.sft.steps == 0 and recipe.sft.optim is None


def test_options_without_a_name_keep_the_default_component(tmp_path):
    recipe, _ = load_recipe(write(tmp_path, GOOD), ["policy.options.generation_batch_size=8"])
    assert recipe.policy.name == "hf"
    assert recipe.policy.options == {"generation_batch_size": 8, "decode": "auto"}
    found, _ = problems(tmp_path, GOOD, "policy.options.no_such_option=1")
    assert "policy.options.no_such_option" in found  # still validated as hf's options


def test_unknown_component_name_and_unknown_key_are_both_reported(tmp_path):
    found, _ = problems(tmp_path, GOOD + "verifier: {name: mathh, bogus_option: 3}\n")
    assert "verifier.name" in found and "math" in found["verifier.name"].hint
    assert "verifier.bogus_option" in found


@pytest.mark.parametrize(
    "critic, path",
    [
        ("{name: self, options: {on_disagreement: retry}}", "critic.options.on_disagreement"),
        ("{name: local, options: {path: m, max_model_len: 2048}}", "critic.options.max_model_len"),
        (
            "{name: local, options: {path: m, backend: vllm, batch_size: 8}}",
            "critic.options.batch_size",
        ),
        (
            "{name: local, options: {path: m, backend: vllm, device: 'cuda:1'}}",
            "critic.options.device",
        ),
    ],
)
def test_critic_options_that_would_be_ignored_are_errors(tmp_path, critic, path):
    found, _ = problems(tmp_path, GOOD + f"critic: {critic}\n")
    assert list(found) == [path], found


def test_critic_options_that_apply_are_fine(tmp_path):
    for critic in (
        "{name: self, options: {on_disagreement: retry, temperature: 0.7}}",
        "{name: local, options: {path: m, backend: vllm, max_model_len: 2048, device: cuda}}",
        "{name: local, options: {path: m, batch_size: 8, device: 'cuda:1'}}",
    ):
        load_recipe(write(tmp_path, GOOD + f"critic: {critic}\n"))


def test_the_weak_to_strong_placeholder_critic_path_is_flagged(tmp_path):
    from tests.helpers import REPO

    data = tmp_path / "train.jsonl"
    data.write_text('{"problem": "1+1?", "answer": "2"}\n')
    with pytest.raises(RecipeError) as err:
        load_recipe(
            REPO / "recipes" / "weak-to-strong.yaml",
            [f"model.path={a_model_dir(tmp_path)}", f"data.task.options.path={data}"],
        )
    (problem,) = err.value.problems
    assert problem.path == "critic.options.path" and "/path/to/small" in problem.message


@pytest.mark.parametrize(
    "overrides, path, needle",
    [
        (["eval.every=5", "eval.benchmarks=[math-50]"], "eval.benchmarks[0].name",
         "did you mean 'math-500'"),
        (["eval.every=5", "eval.benchmarks=[{name: aime24, options: {k: 0}}]"],
         "eval.benchmarks[0].options.k", "greater than or equal to 1"),
        (["eval.every=5", "eval.benchmarks=[{name: aime24, options: {k: 1, temperature: 1}}]"],
         "eval.benchmarks[0].options.temperature", "k: 1"),
        (["eval.every=5", "eval.benchmarks=[aime24, aime24]"], "eval.benchmarks[1]",
         "listed twice"),
        (["eval.every=5", "eval.benchmarks=[aime24]", "eval.task=arithmetic"], "eval.task",
         "replaced by eval.benchmarks"),
        (["eval.every=5", "eval.benchmarks=[aime24]", "train.keep_best=eval/aime25/score"],
         "train.keep_best", "eval/avg/score"),
        (["train.keep_best=eval/accuracy"], "train.keep_best", "evaluation is off"),
        (["eval.benchmarks=[aime24]"], "eval.benchmarks", "evaluation is off"),
    ],
)  # fmt: skip
def test_benchmark_lists_are_checked_before_anything_runs(tmp_path, overrides, path, needle):
    found, _ = problems(tmp_path, GOOD, *overrides)
    assert path in found, found
    assert needle in found[path].message + " " + (found[path].hint or ""), found[path]


def test_benchmarks_resolve_with_their_preset_defaults(tmp_path):
    recipe, resolved = load_recipe(
        write(tmp_path, GOOD),
        ["eval.every=5", "eval.benchmarks=[aime24, {name: rows, options: {path: x.jsonl, "
         "label: mine}}]", "train.keep_best=eval/mine/accuracy"],
    )  # fmt: skip
    first, second = resolved["eval"]["benchmarks"]
    assert first["options"]["k"] == 16 and first["options"]["question_field"] == "problem"
    assert "temperature" not in second["options"]  # k 1: pruned from the saved recipe
    assert recipe.eval.task_sampling() == (1, 0.6, 0.95)


def test_plugin_options_that_do_not_forbid_extras_still_refuse_unknown_keys():
    """pydantic drops unknown keys by default; a plugin's Options written that way must not
    accept a mistyped option and ignore it. extra='allow' is an explicit choice and kept."""
    from pydantic import BaseModel, ConfigDict, ValidationError

    from cgrpo.config.validate import issues_from_validation, strict_options

    class Lax(BaseModel):
        marker: str = "so"

    class Open(BaseModel):
        model_config = ConfigDict(extra="allow")

    with pytest.raises(ValidationError) as err:
        strict_options(Lax).model_validate({"markr": "x"})
    (issue,) = issues_from_validation(err.value, Lax, "sft.wrong_answer.options")
    assert issue.path == "sft.wrong_answer.options.markr" and "marker" in issue.hint
    assert strict_options(Lax).model_validate({"marker": "x"}).marker == "x"
    assert strict_options(Open) is Open


def test_speculative_refinement_needs_the_paper_rule(tmp_path):
    """It starts a group's refinements before the group is complete; only failed_groups
    waits for the group, and nothing is refined with K = 0."""
    spec = "rollout.speculative_refinement=true"
    ok = [spec, "algorithm.refine=failed_groups", "policy=vllm"]
    recipe, _ = load_recipe(write(tmp_path, GOOD), ok)
    assert recipe.rollout.speculative_refinement
    found, _ = problems(tmp_path, GOOD, spec, "algorithm.refine=all")
    assert "failed_groups" in found["rollout.speculative_refinement"].hint
    found, _ = problems(tmp_path, GOOD, spec, "algorithm.refinements_per_prompt=0")
    assert "refinements_per_prompt" in found["rollout.speculative_refinement"].hint
    found, _ = problems(tmp_path, GOOD, spec, "algorithm.refine=failed_groups", "policy=hf")
    assert "policy: vllm" in found["rollout.speculative_refinement"].hint
