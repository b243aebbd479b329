"""The plugin host: built-ins through hooks, entry points, env-var controls, errors."""

import pytest

from cgrpo import hookimpl
from cgrpo.errors import PluginError, UnknownComponentError
from cgrpo.plugins import build_plugin_manager, collect_registries
from cgrpo.registry import KINDS
from tests.helpers import REPO, fake_distribution, run_cli

GSM8K_SRC = REPO / "plugins" / "cgrpo-gsm8k" / "src"


def test_builtins_are_registered_through_the_hooks():
    regs = collect_registries()
    assert set(regs["verifier"].names()) >= {"math", "exact", "choice"}
    assert set(regs["critic"].names()) >= {"indicative", "ground_truth"}
    assert set(regs["advantage"].names()) >= {"grpo", "rloo", "reinforce_pp"}
    assert {"hf", "vllm"} <= set(regs["policy"].names())
    assert {"jsonl", "csv", "parquet", "hf_dataset", "arithmetic"} <= set(regs["task"].names())
    assert regs["verifier"].get("math").plugin == "builtins.verifiers"
    assert set(KINDS) == set(regs.by_kind)


class DuplicateMath:
    @hookimpl
    def register_verifiers(self, register):
        register("math", lambda options, context: None)


def test_duplicate_name_names_both_plugins():
    pm = build_plugin_manager()
    pm.register(DuplicateMath(), name="my-plugin")
    with pytest.raises(PluginError) as err:
        collect_registries(pm)
    assert "builtins.verifiers" in str(err.value) and "my-plugin" in str(err.value)


def test_unknown_name_lists_available_and_closest():
    regs = collect_registries()
    with pytest.raises(UnknownComponentError) as err:
        regs["critic"].get("ground_truht")
    assert err.value.suggestion == "ground_truth"
    assert "indicative" in str(err.value)


def test_third_party_entry_point_shows_in_list_and_can_be_blocked(tmp_path):
    site = fake_distribution(tmp_path, "cgrpo-gsm8k", {"gsm8k": "cgrpo_gsm8k"})
    shown = run_cli("list", "verifier", paths=[site, GSM8K_SRC], env={"COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    assert "gsm8k" in shown.stdout
    blocked = run_cli(
        "list",
        "verifier",
        paths=[site, GSM8K_SRC],
        env={"CGRPO_BLOCK_PLUGINS": "gsm8k", "COLUMNS": "200"},
    )
    assert blocked.returncode == 0 and "gsm8k" not in blocked.stdout
    none = run_cli(
        "list",
        "verifier",
        paths=[site, GSM8K_SRC],
        env={"CGRPO_LOAD_PLUGINS": "", "COLUMNS": "200"},
    )
    assert none.returncode == 0 and "gsm8k" not in none.stdout
    only = run_cli(
        "list",
        "verifier",
        paths=[site, GSM8K_SRC],
        env={"CGRPO_LOAD_PLUGINS": "gsm8k", "COLUMNS": "200"},
    )
    assert "gsm8k" in only.stdout and "math" in only.stdout  # built-ins always load


def test_a_plugin_benchmark_lists_reads_rows_and_scores_with_its_plugin_verifier(
    tmp_path, monkeypatch
):
    """The example plugin's ``gsm8k`` benchmark: a preset of the row benchmark scored by
    the plugin's own verifier, listed like the built-ins."""
    site = fake_distribution(tmp_path / "site", "cgrpo-gsm8k", {"gsm8k": "cgrpo_gsm8k"})
    shown = run_cli("list", "benchmark", paths=[site, GSM8K_SRC], env={"COLUMNS": "200"})
    assert shown.returncode == 0 and "gsm8k" in shown.stdout and "openai/gsm8k" in shown.stdout
    monkeypatch.syspath_prepend(str(GSM8K_SRC))
    import cgrpo_gsm8k

    from cgrpo.interfaces import BuildContext

    pm = build_plugin_manager()
    pm.register(cgrpo_gsm8k, name="gsm8k-test")
    regs = collect_registries(pm)
    data = tmp_path / "test.jsonl"
    data.write_text(
        '{"question": "Ann has 3 bags of 24 apples. How many apples?", '
        '"answer": "3 bags x 24 = 72 apples.\\n#### 72"}\n'
    )
    bench = regs["benchmark"].build("gsm8k", {"path": str(data)}, BuildContext())
    (problem,) = bench.load()
    name, options = bench.verifier
    verifier = regs["verifier"].build(name, options, BuildContext())
    assert name == "gsm8k" and regs["benchmark"].get("gsm8k").plugin == "gsm8k-test"
    assert verifier.verify("so \\boxed{72}", problem).correct
    assert not verifier.verify("so \\boxed{71}", problem).correct


def test_misspelt_hook_is_reported(tmp_path):
    (tmp_path / "typo_plugin.py").write_text(
        "from cgrpo import hookimpl\n\n@hookimpl\ndef register_verifier(register):\n    pass\n"
    )
    site = fake_distribution(tmp_path, "typo-plugin", {"typo": "typo_plugin"})
    out = run_cli("list", paths=[site])
    assert out.returncode == 1
    assert "register_verifier" in out.stderr and "register_critics" in out.stderr


def test_broken_plugin_import_names_the_plugin(tmp_path):
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('missing dependency foo')\n")
    site = fake_distribution(tmp_path, "broken-plugin", {"broken": "broken_plugin"})
    out = run_cli("list", paths=[site])
    assert out.returncode == 1
    assert "'broken'" in out.stderr and "CGRPO_BLOCK_PLUGINS=broken" in out.stderr


def test_plugin_component_is_usable_from_a_recipe(tmp_path):
    site = fake_distribution(tmp_path, "cgrpo-gsm8k", {"gsm8k": "cgrpo_gsm8k"})
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: {path: hub-org/some-model}\n"
        "data: {task: arithmetic}\n"
        "verifier: {name: gsm8k, options: {rel_tol: 0.001}}\n"
    )
    ok = run_cli("check", str(recipe), paths=[site, GSM8K_SRC])
    assert ok.returncode == 0, ok.stderr
    assert "rel_tol: 0.001" in ok.stdout
    bad = run_cli("check", str(recipe), "verifier.options.rel_tl=1", paths=[site, GSM8K_SRC])
    assert bad.returncode == 2
    assert "verifier.options.rel_tl" in bad.stderr and "rel_tol" in bad.stderr


def test_gsm8k_verifier_behaviour():
    import sys

    sys.path.insert(0, str(GSM8K_SRC))
    try:
        from cgrpo_gsm8k import GSM8KVerifier
    finally:
        sys.path.remove(str(GSM8K_SRC))
    from cgrpo.types import Problem

    v = GSM8KVerifier(GSM8KVerifier.Options())
    gold = Problem("1", "q", "She pays 3 * 5 = 15 dollars.\n#### 1,215")
    assert v.verify("so she pays $1,215 in total", gold).correct
    assert v.verify(r"\boxed{1215.0}", gold).correct
    assert not v.verify("#### 1216", gold).correct
    assert v.verify("no number", gold).reason == "no_answer"


WRONG_PLUGIN = """
from pydantic import BaseModel, ConfigDict
from cgrpo import hookimpl
from cgrpo.types import Verdict

class Reversed:
    '''The right answer written backwards, behind a marker.'''
    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        marker: str = "so"
    uses_own_sample = False
    def __init__(self, options, context):
        self.marker = options.marker
    def make(self, problem, pool, rng, sample=None):
        bad = problem.answer[::-1]
        return f"{self.marker} {bad}", Verdict(0.0, False, bad)

@hookimpl
def register_wrong_answers(register):
    register("reversed", Reversed)
"""


def test_a_plugin_wrong_answer_maker_is_listed_and_checked_in_recipes(tmp_path):
    (tmp_path / "wrong_plugin.py").write_text(WRONG_PLUGIN)
    site = fake_distribution(tmp_path, "wrong-plugin", {"wrong": "wrong_plugin"})
    listed = run_cli("list", "wrong_answer", paths=[site])
    assert listed.returncode == 0, listed.stderr
    assert "reversed" in listed.stdout and "own_sample" in listed.stdout
    base = ["sft.steps=5", "sft.refinement_share=0.5", "model.path=hub-org/some-model"]
    recipe = str(REPO / "recipes" / "quickstart-cpu.yaml")
    ok = run_cli(
        "check", recipe, *base, "sft.wrong_answer={name: reversed, options: {marker: Thus}}",
        paths=[site],
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    bad = run_cli(
        "check", recipe, *base, "sft.wrong_answer={name: reversed, options: {markr: x}}",
        paths=[site],
    )  # fmt: skip
    assert bad.returncode == 2 and "sft.wrong_answer.options.markr" in bad.stderr
    unknown = run_cli("check", recipe, *base, "sft.wrong_answer=revresed", paths=[site])
    assert unknown.returncode == 2 and "did you mean 'reversed'" in unknown.stderr
