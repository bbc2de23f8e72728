"""Continual-learning metrics: pure functions over a task x task quality matrix.

Q[i][j] (0-based here, tasks 1..T in the docs) is the quality of task j's generations after training
task i; entries with j > i are None (task j not trained yet). Every function validates the shape:
T rows of T entries, numbers on and below the diagonal, None above it.
`lower_is_better`: True for FID/KID, False for classifier accuracy.
With a single task (T = 1) there is nothing to forget: `forgetting` is [] and `forgetting_mean` and
`bwt` are None (not 0.0, which would claim a measured "no forgetting").
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

Matrix = Sequence[Sequence[float | None]]


def _validate(matrix: Matrix) -> int:
    T = len(matrix)
    if T == 0:
        raise ValueError("empty quality matrix")
    for i, row in enumerate(matrix):
        if len(row) != T:
            raise ValueError(f"row {i} has {len(row)} entries, expected {T} (a square T x T matrix)")
        for j, q in enumerate(row):
            if j > i and q is not None:
                raise ValueError(f"Q[{i}][{j}] = {q!r}: task {j} is not trained after task {i}, expected None")
            if j <= i and (q is None or isinstance(q, bool) or not isinstance(q, numbers.Real)):
                raise ValueError(f"Q[{i}][{j}] = {q!r}: expected a number on or below the diagonal")
            if j <= i and not math.isfinite(q):
                raise ValueError(f"Q[{i}][{j}] = {q!r}: expected a finite number")
    return T


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def final_mean(matrix: Matrix) -> float:
    """Average final quality: mean_j Q[T][j] over all T tasks."""
    T = _validate(matrix)
    return float(sum(matrix[T - 1]) / T)


def forgetting(matrix: Matrix, lower_is_better: bool = True) -> list[float]:
    """Forgetting of each task j < T; positive = got worse since its best earlier value.

    lower is better (FID): Q[T][j] - min_{j <= i < T} Q[i][j]
    higher is better (acc): max_{j <= i < T} Q[i][j] - Q[T][j]
    """
    T = _validate(matrix)
    last = matrix[T - 1]
    out = []
    for j in range(T - 1):
        history = [matrix[i][j] for i in range(j, T - 1)]
        f = last[j] - min(history) if lower_is_better else max(history) - last[j]
        out.append(float(f))
    return out


def forgetting_mean(matrix: Matrix, lower_is_better: bool = True) -> float | None:
    """Mean forgetting over tasks 1..T-1; None when T = 1."""
    return _mean(forgetting(matrix, lower_is_better))


def bwt(matrix: Matrix) -> float | None:
    """Backward transfer: mean_{j < T} (Q[T][j] - Q[j][j]); None when T = 1.

    Raw difference, no sign flip: for FID positive means worse, for accuracy negative means worse.
    """
    T = _validate(matrix)
    return _mean([float(matrix[T - 1][j] - matrix[j][j]) for j in range(T - 1)])


# Two-sided 95% quantiles of Student's t, t_{0.975, df}, for df = 1..29 (30 seeds at most).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045)


def mean_ci95(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean of a figure over n independent runs (training seeds) and the half-width of its 95% confidence
    interval, t_{0.975, n-1} * s / sqrt(n) (s: the sample standard deviation); None when n = 1, where
    one run says nothing about the spread."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci95 of no values")
    if n - 1 > len(_T975):
        raise ValueError(f"mean_ci95: at most {len(_T975) + 1} values, got {n}")
    mean = sum(values) / n
    if n == 1:
        return float(mean), None
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return float(mean), float(_T975[n - 2] * s / math.sqrt(n))
