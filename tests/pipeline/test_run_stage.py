"""A stage's user errors are one line and exit code 2; anything else keeps its traceback."""

from __future__ import annotations

import pytest

from lifelong.data.shards import ShardError
from pipeline.params import ParamsError
from pipeline.stage import run_stage


def _raises(err: BaseException):
    def main():
        raise err

    return main


@pytest.mark.parametrize("err", [ParamsError("params.yaml: train.lr: bad"), FileNotFoundError("x.json not found"),
                                 ShardError("shard /d/t.tar is corrupt; re-run the prepare stage")])
def test_a_user_error_is_one_line_and_exit_2(err, capsys):
    with pytest.raises(SystemExit) as stop:
        run_stage(_raises(err))
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"error: {err}\n"


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        run_stage(_raises(ZeroDivisionError("division by zero")))


def test_success_exits_with_mains_code():
    with pytest.raises(SystemExit) as stop:
        run_stage(lambda: 0)
    assert stop.value.code == 0
