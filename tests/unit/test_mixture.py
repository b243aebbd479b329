"""The mixture task: proportions, seeded draws, templates, labels and verifier routes."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from cgrpo.builtins.tasks.mixture import draw, shares
from cgrpo.builtins.verifiers.exact import ExactVerifier
from cgrpo.builtins.verifiers.math import MathVerifier
from cgrpo.interfaces import BuildContext
from cgrpo.plugins import get_registries
from cgrpo.train.verify_pool import VerifyPool
from cgrpo.types import Problem


def mixture(**options):
    return get_registries()["task"].build("mixture", options, BuildContext())


@pytest.mark.parametrize(
    "total, weights, expected",
    [(10, [1, 1], [5, 5]), (10, [3, 1], [8, 2]), (7, [1, 1, 1], [3, 2, 2]), (5, [1], [5]),
     (3, [0.5, 0.25, 0.25], [1, 1, 1])],  # remainders .5, .75, .75: the two .75 win
)  # fmt: skip
def test_shares_add_up_and_follow_the_weights(total, weights, expected):
    assert shares(total, weights) == expected and sum(expected) == total


def test_draw_repeats_nothing_until_every_problem_was_drawn():
    import random

    problems = [Problem(str(i), "q", "1") for i in range(4)]
    drawn = draw(problems, 10, random.Random(0))
    assert len({p.id for p in drawn[:4]}) == 4 and len({p.id for p in drawn[4:8]}) == 4
    assert Counter(p.id for p in drawn).most_common(1)[0][1] == 3


def test_a_mixture_of_two_sources_with_templates_labels_and_a_verifier(tmp_path):
    data = tmp_path / "words.jsonl"
    data.write_text("".join(json.dumps({"question": f"Spell {w}", "answer": w}) + "\n"
                            for w in ("cat", "dog", "owl")))  # fmt: skip
    task = mixture(
        sources=[
            {"name": "arithmetic", "options": {"size": 20}, "weight": 3, "label": "sums"},
            {"name": "jsonl", "options": {"path": str(data)}, "label": "words",
             "template": "Word task: {question}", "verifier": {"name": "exact"}},
        ],
        size=8,
    )  # fmt: skip
    problems = task.load()
    assert Counter(p.metadata["task"] for p in problems) == {"sums": 6, "words": 2}
    words = [p for p in problems if p.metadata["task"] == "words"]
    assert all(p.question.startswith("Word task: Spell ") for p in words)
    assert all(p.id.startswith(("sums/", "words/")) for p in problems)
    assert task.verifiers == {"words": ("exact", {})}
    assert [p.id for p in task.load()] == [p.id for p in problems]  # deterministic
    other = mixture(sources=task.options.model_dump()["sources"], size=8, seed=1).load()
    assert [p.id for p in other] != [p.id for p in problems]

    # routed: the words by the exact verifier, the sums by the default (math)
    routes = {"words": (ExactVerifier(), ("exact", {}))}
    pairs = [("\\boxed{" + p.answer + "}", p) for p in problems]
    verdicts = VerifyPool(1).verify_routed((MathVerifier(), ("math", {})), routes, pairs)
    assert all(v.correct for v in verdicts)


@pytest.mark.parametrize(
    "sources, needle",
    [
        ([], "at least one source"),
        ([{"name": "arithmetic"}, {"name": "arithmetic"}], "appear twice"),
        ([{"name": "arithmetc"}], "unknown task 'arithmetc'"),
        ([{"name": "arithmetic", "options": {"size": 0}}], "greater than or equal to 1"),
        ([{"name": "mixture", "options": {"sources": [{"name": "arithmetic"}]}}],
         "cannot hold another mixture"),
        ([{"name": "arithmetic", "verifier": "exactt"}], "unknown verifier 'exactt'"),
        ([{"name": "arithmetic", "weight": 0}], "greater than 0"),
    ],
)  # fmt: skip
def test_mixtures_that_cannot_work_are_refused(sources, needle):
    with pytest.raises(Exception, match=needle):
        get_registries()["task"].get("mixture").options.model_validate({"sources": sources})
