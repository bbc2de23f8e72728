"""Test and development harnesses, started as modules (`python -m pipeline.devtools.<name>`):
the two-node Ray cluster on one machine (clustertest.py, `lifelong cluster-test`) and the MLflow UI
checked in headless Chromium (uicheck.py). Nothing in the stages or the services imports them.
"""
