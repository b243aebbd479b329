"""Evaluation metrics over k samples per problem (pure functions, no model).

* pass@k: the chance that at least one of k samples is correct, estimated without bias
  from n >= k samples of which c are correct: 1 - C(n-c, k) / C(n, k) (Chen et al., 2021,
  "Evaluating Large Language Models Trained on Code", eq. 1). Taking the first k of n
  samples instead would be a noisier estimate of the same number.
* avg@k: mean accuracy over the k samples (what AIME/AMC tables usually report with k
  sampled runs).
* maj@k: majority vote over the k samples' extracted answers; the problem counts as
  solved when the voted answer is one the verifier accepted. Samples with no extracted
  answer do not vote; ties go to the answer seen first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from math import comb


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:  # every draw of k samples holds a correct one
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """Whether the most common extracted answer is a correct one."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return False
    top = max(votes.values())
    winner = next(a for a in answers if a is not None and votes[a] == top)
    return any(ok for a, ok in zip(answers, correct, strict=True) if a == winner)


def summarize(
    correct: Sequence[Sequence[bool]], answers: Sequence[Sequence[str | None]], k: int
) -> dict[str, float]:
    """Means over problems of pass@k, avg@k and maj@k (``correct[i]``: problem i's n >= k
    samples; ``answers[i]``: their extracted answers)."""
    if not correct:
        return {}
    n_problems = len(correct)
    return {
        f"pass@{k}": sum(pass_at_k(len(c), sum(c), k) for c in correct) / n_problems,
        f"avg@{k}": sum(sum(c) / len(c) for c in correct) / n_problems,
        f"maj@{k}": sum(majority_correct(a, c) for a, c in zip(answers, correct, strict=True))
        / n_problems,
    }
