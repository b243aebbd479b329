"""Every shipped CPU recipe, shortened, as a user runs it: ``cgrpo run`` -> ``cgrpo check``
of the recipe.yaml the run saved -> ``cgrpo eval RUN`` -> ``cgrpo run RUN/recipe.yaml
resume=auto``. What a run writes must validate again on the machine that wrote it.

One process runs them all (the imports are paid once) through the real CLI entry point;
the API-critic recipe talks to the local fake server over HTTP with the real SDK."""

from pathlib import Path

import pytest

from cgrpo.cli.main import main
from tests.fake_openai import FakeOpenAI
from tests.helpers import REPO

pytestmark = pytest.mark.slow

TINY = [
    "sft.steps=1",
    "sft.batch_size=4",
    "train.steps=1",
    "data.task.options.size=80",  # cgrpo eval holds out 64 (eval.size)
    "algorithm.prompts_per_step=2",
    "algorithm.samples_per_prompt=3",
    "algorithm.micro_batch_size=8",
    "sampling.max_new_tokens=12",
    "run.console=plain",
    "model.device=cpu",  # as on a CPU machine: run.memory_check is written all the same
]


def recipe_overrides(name: str, root: Path, base_url: str) -> list[str]:
    where = [f"run.output_dir={root / 'runs'}"]
    if name == "quickstart-lora-cpu":  # LoRA on the quickstart run's warm weights
        base = root / "runs" / "quickstart" / "checkpoints" / "step-1"
        return [*TINY[1:], *where, f"model.path={base}"]
    extra = {
        "api-critic-cpu": [f"critic.options.base_url={base_url}"],
        "persistent-failures-cpu": ["eval.size=2"],
    }.get(name, [])
    return [*TINY, *where, f"model.path={root / 'tiny'}", *extra]


def test_every_cpu_recipe_runs_and_its_saved_recipe_checks_evaluates_and_resumes(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    names = sorted(p.stem for p in (REPO / "recipes").glob("*cpu*.yaml"))
    assert names[0] == "api-critic-cpu" and names.index("quickstart-lora-cpu") > names.index(
        "quickstart-cpu"
    )
    with FakeOpenAI() as server:
        for name in names:
            recipe = REPO / "recipes" / f"{name}.yaml"
            overrides = recipe_overrides(name, tmp_path, server.base_url)
            assert main(["run", str(recipe), *overrides]) == 0, (name, capsys.readouterr())
            out = capsys.readouterr()
            run_dir = Path(out.out.split("cgrpo: run directory ")[1].split()[0].rstrip(","))
            saved = str(run_dir / "recipe.yaml")
            assert main(["check", saved]) == 0, (name, capsys.readouterr())
            assert main(["eval", str(run_dir), "--limit", "2"]) == 0, name
            assert main(["run", saved, "resume=auto"]) == 0, (name, capsys.readouterr())
            assert "resuming from" in capsys.readouterr().out, name
