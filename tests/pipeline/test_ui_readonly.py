"""`lifelong ui` shows everything and lets nobody write into the pipeline's stores.

A real `lifelong ui` (pipeline/services/uiserver.py) over a real sqlite store with a run, a logged model with
artifact files under <repo>/mlartifacts (a file:// root, as the pipeline creates it) and a registered
version with an alias: reads over REST succeed; every kind of write is refused, and the database file
and the artifact folder are byte for byte what they were.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipeline.devtools.uicheck import UIServer
from pipeline.services.uiserver import StoreError, is_read, read_only_uri

pytestmark = pytest.mark.timeout(600)  # the UI server starts in 15 s idle, minutes on a loaded 2-core box

MODEL = "it-label-diffusion-finetune"


def _store(root: Path, monkeypatch) -> dict:
    """The pipeline's layout in miniature: <root>/mlflow.db, experiment artifacts in <root>/mlartifacts."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the registry finds the logged model through it
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.create_experiment("it", artifact_location=(root / "mlartifacts").as_uri(),
                                   tags={"mlflow.experimentKind": "custom_model_development"})
    run = client.create_run(exp, run_name="label/diffusion-finetune/task-1")
    for step in range(3):
        client.log_metric(run.info.run_id, "train/loss", 1.0 / (step + 1), step=step)
    client.set_terminated(run.info.run_id)
    model = client.create_logged_model(exp, name="model", source_run_id=run.info.run_id)
    files = root / "model-files"
    files.mkdir()
    (files / "model.pt").write_bytes(b"weights")
    (files / "config.json").write_text("{}")
    client.log_model_artifacts(model.model_id, str(files))
    client.finalize_logged_model(model.model_id, "READY")
    client.create_registered_model(MODEL)
    version = client.create_model_version(MODEL, f"models:/{model.model_id}", run_id=run.info.run_id,
                                          tags={"parent_version": "", "data_digest": "abc"})
    client.set_registered_model_alias(MODEL, "task-1", version.version)
    return {"experiment_id": exp, "run_id": run.info.run_id, "model_id": model.model_id}


def _snapshot(root: Path) -> dict:
    """The db file's hash and row counts, and every file under mlartifacts with its hash."""
    db = root / "mlflow.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
        counts = {t: con.execute(f'select count(*) from "{t}"').fetchone()[0] for t in tables}
    files = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted((root / "mlartifacts").rglob("*")) if p.is_file()}
    return {"db": hashlib.sha256(db.read_bytes()).hexdigest(), "rows": counts, "artifacts": files,
            "root": sorted(p.name for p in root.iterdir())}


def _call(url: str, method: str = "GET", body: dict | bytes | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    headers = {"Content-Type": "application/json" if isinstance(body, dict) else "application/octet-stream"}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_ui_reads_everything_and_writes_nothing(tmp_path, monkeypatch):
    ids = _store(tmp_path, monkeypatch)
    before = _snapshot(tmp_path)
    assert any(k.endswith("model.pt") for k in before["artifacts"])  # the logged model's files are there

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # this repo's store only
    with UIServer(tmp_path, env=env) as ui:
        api, ajax = f"{ui.url}/api/2.0/mlflow", f"{ui.url}/ajax-api/2.0/mlflow"
        run_id, model_id = ids["run_id"], ids["model_id"]

        # Reads: what the UI's pages need.
        assert _call(f"{ui.url}/health") == (200, b"OK")
        status, body = _call(f"{api}/registered-models/get?name={MODEL}")
        assert status == 200 and json.loads(body)["registered_model"]["aliases"] == [{"alias": "task-1", "version": "1"}]
        status, body = _call(f"{api}/runs/search", "POST", {"experiment_ids": [ids["experiment_id"]]})
        assert status == 200 and [r["info"]["run_id"] for r in json.loads(body)["runs"]] == [run_id]
        status, body = _call(f"{ajax}/metrics/get-history-bulk-interval?run_ids={run_id}&metric_key=train/loss"
                             "&max_results=100")
        assert status == 200 and len(json.loads(body)["metrics"]) == 3
        status, body = _call(f"{ajax}/logged-models/{model_id}/artifacts/directories")
        assert status == 200, body
        status, body = _call(f"{ajax}/logged-models/{model_id}/artifacts/files?artifact_file_path=config.json")
        assert (status, body) == (200, b"{}")
        status, body = _call(f"{ui.url}/graphql", "POST",
                             {"query": f'query {{ mlflowGetRun(input: {{runId: "{run_id}"}}) {{ run {{ info {{ runName }} }} }} }}'})
        assert status == 200 and b"label/diffusion-finetune/task-1" in body
        status, body = _call(f"{ui.url}/")
        assert status == 200 and b"mlflow.workflowType_v1" in body  # the UI's defaults: runs, not traces

        # Writes: the registry, runs, experiments, and artifacts through every door.
        writes = [
            ("POST", f"{api}/registered-models/create", {"name": "intruder"}),
            ("POST", f"{api}/registered-models/alias", {"name": MODEL, "alias": "champion", "version": "1"}),
            ("DELETE", f"{api}/registered-models/alias", {"name": MODEL, "alias": "task-1"}),
            ("POST", f"{api}/model-versions/set-tag", {"name": MODEL, "version": "1", "key": "k", "value": "v"}),
            ("DELETE", f"{api}/model-versions/delete", {"name": MODEL, "version": "1"}),
            ("POST", f"{api}/runs/create", {"experiment_id": ids["experiment_id"], "run_name": "intruder"}),
            ("POST", f"{api}/runs/set-tag", {"run_id": run_id, "key": "k", "value": "v"}),
            ("POST", f"{api}/runs/log-metric", {"run_id": run_id, "key": "m", "value": 1, "timestamp": 0}),
            ("POST", f"{api}/experiments/create", {"name": "intruder"}),
            ("POST", f"{ajax}/experiments/set-experiment-tag",
             {"experiment_id": ids["experiment_id"], "key": "mlflow.experimentKind", "value": "genai_development"}),
            ("PUT", f"{ui.url}/api/2.0/mlflow-artifacts/artifacts/{ids['experiment_id']}/{run_id}/artifacts/x.txt", b"x"),
            ("PUT", f"{ui.url}/api/2.0/mlflow-artifacts/artifacts/x.txt", b"x"),
            ("POST", f"{ui.url}/api/2.0/mlflow-artifacts/mpu/create/x/search", {"path": "x"}),
            ("POST", f"{ajax}/upload-artifact?run_uuid={run_id}&path=x.txt", b"x"),  # into the file:// root
            ("POST", f"{api}/logged-models", {"experiment_id": ids["experiment_id"], "name": "intruder"}),
            ("DELETE", f"{api}/logged-models/{model_id}", None),
            ("POST", f"{ajax}/runs/create-promptlab-run", {"experiment_id": ids["experiment_id"]}),
            ("POST", f"{api}/runs//search/../create", {"experiment_id": ids["experiment_id"]}),
        ]
        for method, url, body in writes:
            status, reply = _call(url, method, body)
            assert status >= 400, f"{method} {url} was accepted: {status} {reply[:200]!r}"

    after = _snapshot(tmp_path)
    assert after == before


def test_the_database_itself_refuses_writes(tmp_path, monkeypatch):
    """The second layer alone: a store opened through read_only_uri cannot write, whatever asks it."""
    monkeypatch.chdir(tmp_path)  # MLflow makes the "parent folder" of a sqlite:///file:... URI under the CWD
    from mlflow.exceptions import MlflowException
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    import sqlite3 as sq

    db = tmp_path / "mlflow.db"
    SqlAlchemyStore(f"sqlite:///{db}", (tmp_path / "a").as_uri())  # creates the schema
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    store = SqlAlchemyStore(read_only_uri(f"sqlite:///{db}"), (tmp_path / "a").as_uri())
    assert [e.name for e in store.search_experiments()] == ["Default"]
    with pytest.raises((MlflowException, sq.OperationalError, Exception), match="readonly|read-only|read only"):
        store.create_experiment("intruder")
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest


def test_read_only_uri_and_request_filter(tmp_path):
    db = tmp_path / "my db.db"
    with pytest.raises(StoreError, match="does not exist yet"):
        read_only_uri(f"sqlite:///{db}")
    db.write_bytes(b"")
    assert read_only_uri(f"sqlite:///{db}") == f"sqlite:///file:{str(db).replace(' ', '%20')}?mode=ro&uri=true"
    assert read_only_uri("sqlite:///file:/x/m.db?cache=shared") == "sqlite:///file:/x/m.db?cache=shared&mode=ro&uri=true"
    assert "default_transaction_read_only%3Don" in read_only_uri("postgresql://u:p@h:5432/mlflow")
    with pytest.raises(StoreError, match="own UI"):
        read_only_uri("http://127.0.0.1:5000")

    assert is_read("GET", "/ajax-api/2.0/mlflow/runs/get")
    assert is_read("POST", "/ajax-api/2.0/mlflow/runs/search") and is_read("POST", "/api/3.0/mlflow/traces/search")
    assert is_read("POST", "/graphql") and is_read("POST", "/ajax-api/2.0mlflow/experiments/search-datasets")
    for method, path in [("POST", "/ajax-api/2.0/mlflow/runs/create"), ("POST", "/ajax-api/2.0/mlflow/upload-artifact"),
                         ("PUT", "/api/2.0/mlflow-artifacts/artifacts/x"), ("PATCH", "/api/2.0/mlflow/logged-models/m"),
                         ("DELETE", "/api/2.0/mlflow/registered-models/alias"),
                         ("POST", "/api/2.0/mlflow-artifacts/mpu/create/a/runs/search"),
                         ("POST", "//ajax-api//2.0/mlflow/runs/update/"), ("POST", "/ajax-api/2.0/mlflow/gateway-proxy"),
                         ("GET", "/ajax-api/3.0/mlflow/assistant/sessions/s1/stream")]:
        assert not is_read(method, path), (method, path)
