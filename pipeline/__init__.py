"""Thin glue between the `lifelong` library and DVC stages, Ray and MLflow: one module per stage.

    the stages          check, prepare, classifier, start, train, evaluate, tune, report
                        (`python -m pipeline.<stage>`, each named in dvc.yaml)
    what they share     params/ (params.yaml), plan (the stage list), layout (paths), stage (the entry
                        point), task (Ray and a task's config), worker (the Ray Train loop), tracking
                        (MLflow runs), registry (MLflow models), pyfunc_model, cluster, stackclient
    services/           what a user runs: the `lifelong` CLI, the team stack, the stage server, the UI
    devtools/           test and development harnesses: the cluster test, the UI check

Arrows point down only: devtools -> services -> the stage glue -> the `lifelong` library.
"""
