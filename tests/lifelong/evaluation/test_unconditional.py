import numpy as np
import pytest

from lifelong.evaluation.unconditional import class_balance_kl, most_like_task


def _probs(preds, num_classes=6):
    p = np.full((len(preds), num_classes), 0.01)
    p[np.arange(len(preds)), preds] = 1.0
    return p / p.sum(1, keepdims=True)


def test_class_balance_kl_is_zero_when_balanced_and_log_c_for_one_class():
    assert class_balance_kl(_probs([0, 1, 2, 3] * 5), [0, 1, 2, 3]) == pytest.approx(0.0)
    assert class_balance_kl(_probs([2] * 10), [0, 1, 2, 3]) == pytest.approx(np.log(4))
    # half the samples are class 0, the rest split over 1..3; predictions of unseen class 5 are dropped
    p = _probs([0] * 6 + [1, 2, 3] * 2 + [5] * 7)
    q = np.array([0.5, 1 / 6, 1 / 6, 1 / 6])
    assert class_balance_kl(p, [0, 1, 2, 3]) == pytest.approx(float((q * np.log(q * 4)).sum()))
    assert class_balance_kl(_probs([5, 5]), [0, 1]) == pytest.approx(np.log(2))  # nothing seen: maximal


def test_most_like_task_picks_the_samples_of_the_tasks_classes_first():
    probs = _probs([4, 0, 1, 4, 2, 0, 3])
    idx = most_like_task(probs, [0, 1], 3)
    assert sorted(idx.tolist()) == [1, 2, 5]
    assert len(most_like_task(probs, [5], 2)) == 2  # a forgotten task still gets its n samples
    with pytest.raises(ValueError, match="pool of 7"):
        most_like_task(probs, [0], 8)
