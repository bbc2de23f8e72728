"""The services a user runs around the stages: the `lifelong` CLI (cli.py), the team MLflow stack
(stack.py), the warm stage server of `lifelong repro` (stageserver.py), the read-only MLflow UI
(uiserver.py), and the one process-supervision module they share (procs.py).

They import the stage glue (`pipeline.*`), never the other way round.
"""
