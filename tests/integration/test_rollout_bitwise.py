"""With ``run.reproducible_sampling`` the hf backend's rows are bit for bit those of the
serial rollout that the per-group rollout replaced (issue 26).

tests/fixtures/serial_rollout_hf.json holds every sequence of three training steps (token
ids, sampler log-probs, rewards, which refinements were kept, critiques) as the serial
rollout of commit f83cfc4 (main before the per-group rollout landed, with issue 27's hf
sampler; first recorded at ac5771c) produced them, written by this module itself run against
that checkout:

    CGRPO_WRITE_GOLDEN=tests/fixtures/serial_rollout_hf.json PYTHONPATH=<that checkout>/src \\
        python -m pytest tests/integration/test_rollout_bitwise.py

The recipe makes every stage matter: rewards from a reward file that passes about one
response in three (so groups pass, fail and half-fail), ``refine: all`` capped at two per
prompt (selection among correct and wrong refinements, the random fallback), and a
generate batch of 5 sequences (12 per step: several calls, rows sorted by prompt length).
The update runs between steps, so steps 2 and 3 also check that the weights moved alike.
"""

import json
import os
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "serial_rollout_hf.json"

REWARD = """
def score(response, problem):
    return sum(response.encode()) % 3 == 0
"""


def run_steps(tmp_path: Path, model_dir: Path, steps: int = 3) -> list[dict]:
    import torch

    from cgrpo.app.build import build
    from cgrpo.config.validate import validate_recipe
    from cgrpo.plugins import get_registries
    from cgrpo.train.loop import Trainer

    torch.set_num_threads(1)
    (tmp_path / "reward.py").write_text(REWARD)
    recipe = validate_recipe(
        {
            "run": {"name": "bitwise", "output_dir": str(tmp_path), "seed": 3,
                    "reproducible_sampling": True, "console": "plain", "verify_workers": 1},
            "model": {"path": str(model_dir), "max_length": 256, "device": "cpu"},
            "data": {"task": {"name": "arithmetic", "options": {"size": 40}},
                     "prompt": {"suffix": "", "max_prompt_tokens": 48}},
            "policy": {"name": "hf", "options": {"generation_batch_size": 5}},
            "critic": "ground_truth",
            "verifier": {"name": "python",
                         "options": {"path": str(tmp_path / "reward.py"), "function": "score"}},
            "sampling": {"max_new_tokens": 12},
            "algorithm": {"prompts_per_step": 4, "samples_per_prompt": 3,
                          "refinements_per_prompt": 1, "refine": "all",
                          "max_refinements_generated": 2, "micro_batch_size": 16},
            "refinement": {"max_critique_tokens": 32},
            "optim": {"lr": 1e-3},
            "train": {"steps": steps, "log_samples": 0},
        }
    )  # fmt: skip
    built = build(recipe, get_registries(), None)
    (tmp_path / "run").mkdir()
    trainer = Trainer(recipe, built, tmp_path / "run")
    seen = []
    inner = trainer._rollout

    def capture(*args, **kwargs):
        seen.append(inner(*args, **kwargs))
        return seen[-1]

    trainer._rollout = capture
    built.policy.sync_weights(built.model)
    for step in range(1, steps + 1):
        trainer.step(step)
    return [
        {
            "records": [
                [r.kind, r.group, list(r.completion.token_ids),
                 [float(x) for x in r.completion.logprobs], r.verdict.score, r.kept, r.row,
                 r.parent, r.critique.text if r.critique else None]
                for r in ro.records
            ],
            "rows": [[r.group, r.response_ids, r.is_refinement, r.reward] for r in ro.rows],
        }
        for ro in seen
    ]  # fmt: skip


def test_hf_reproducible_rows_are_the_serial_rollouts_bit_for_bit(tmp_path, tiny_model_dir):
    got = run_steps(tmp_path, tiny_model_dir)
    target = os.environ.get("CGRPO_WRITE_GOLDEN")
    if target:
        Path(target).write_text(json.dumps(got) + "\n")
        pytest.skip(f"wrote {target}")
    want = json.loads(GOLDEN.read_text())
    assert len(got) == len(want) == 3
    kinds = [r[0] for step in want for r in step["records"]]
    # the recipe exercises refinements, kept and dropped, and wrong and right answers
    assert kinds.count("refinement") >= 6
    assert {r[5] for step in want for r in step["records"] if r[0] == "refinement"} == {True, False}
    for step, (mine, theirs) in enumerate(zip(got, want, strict=True), start=1):
        assert mine["records"] == theirs["records"], f"step {step}: records differ"
        assert mine["rows"] == theirs["rows"], f"step {step}: rows differ"
