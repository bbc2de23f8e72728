import pytest

from lifelong.metrics import bwt, final_mean, forgetting, forgetting_mean

# FID-like, lower is better. Rows: after task i; columns: task j.
FID = [
    [10.0, None, None],
    [14.0, 20.0, None],
    [18.0, 16.0, 30.0],
]
# accuracy-like, higher is better
ACC = [
    [0.9, None, None],
    [0.95, 0.8, None],
    [0.7, 0.85, 0.6],
]


def test_lower_is_better():
    assert final_mean(FID) == pytest.approx((18 + 16 + 30) / 3)
    # task 1: 18 - min(10, 14) = 8; task 2: 16 - min(20) = -4 (improved)
    assert forgetting(FID, lower_is_better=True) == pytest.approx([8.0, -4.0])
    assert forgetting_mean(FID, lower_is_better=True) == pytest.approx(2.0)
    assert bwt(FID) == pytest.approx(((18 - 10) + (16 - 20)) / 2)


def test_higher_is_better():
    assert final_mean(ACC) == pytest.approx((0.7 + 0.85 + 0.6) / 3)
    # task 1: max(0.9, 0.95) - 0.7 = 0.25; task 2: 0.8 - 0.85 = -0.05
    assert forgetting(ACC, lower_is_better=False) == pytest.approx([0.25, -0.05])
    assert forgetting_mean(ACC, lower_is_better=False) == pytest.approx(0.1)
    assert bwt(ACC) == pytest.approx(((0.7 - 0.9) + (0.85 - 0.8)) / 2)


def test_single_task():
    m = [[12.5]]
    assert final_mean(m) == 12.5
    assert forgetting(m) == []
    assert forgetting_mean(m) is None
    assert bwt(m) is None


@pytest.mark.parametrize(
    "bad",
    [
        [],
        [[1.0], [2.0, 3.0]],  # ragged (lower triangle without the None padding)
        [[1.0, None], [2.0]],
        [[1.0, 5.0], [2.0, 3.0]],  # upper triangle filled
        [[1.0, None], [None, 3.0]],  # hole below the diagonal
        [[float("nan"), None], [2.0, 3.0]],
    ],
)
def test_rejects_malformed_matrices(bad):
    for fn in (final_mean, forgetting, forgetting_mean, bwt):
        with pytest.raises(ValueError):
            fn(bad)


def test_mean_ci95_is_the_t_interval_and_none_for_one_value():
    from lifelong.metrics import mean_ci95

    assert mean_ci95([3.0]) == (3.0, None)
    mean, half = mean_ci95([1.0, 2.0, 3.0])  # s = 1, t_{0.975, 2} = 4.303
    assert mean == 2.0 and abs(half - 4.303 / 3 ** 0.5) < 1e-9
    assert mean_ci95([5.0, 5.0]) == (5.0, 0.0)
    with pytest.raises(ValueError):
        mean_ci95([])
