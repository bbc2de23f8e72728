"""`lifelong stack` for real: PostgreSQL, SeaweedFS and `mlflow server --app-name basic-auth`, started by the
real CLI in a temporary root; an MLflow client writes through it; the rows are in PostgreSQL, the artifact
in the S3 bucket; anonymous requests are refused; nothing listens beyond 127.0.0.1; the data survives
down/up; a stored port taken by another process stops `up` before anything starts."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from pipeline import stackclient
from pipeline.services import procs, stack
from tests.integration.conftest import BIN, stage_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MODEL = "stack-it"


def lifelong_stack(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = stage_env()
    env.pop(stackclient.STACK_DIR_ENV, None)
    res = subprocess.run([str(BIN / "lifelong"), "stack", *args], cwd=root, env=env, capture_output=True,
                         text=True, timeout=400)
    if check and res.returncode != 0:
        raise AssertionError(f"lifelong stack {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


@pytest.fixture
def root():
    """A fresh root without params.yaml. Not pytest's tmp_path: as root, PostgreSQL runs as the `postgres`
    user, which cannot enter /tmp/pytest-of-root (0700); `up` refuses such a path (tested below)."""
    path = Path(tempfile.mkdtemp(prefix="lifelong-stack-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        lifelong_stack(path, "down", check=False)  # nothing keeps running, whatever failed
        shutil.rmtree(path, ignore_errors=True)


def stack_pids(sdir: Path) -> list[int]:
    """The stack's processes: each component's leader and all its descendants (uvicorn workers, postgres backends)."""
    cfg = json.loads((sdir / "stack.json").read_text())
    leaders = [*cfg["pids"].values()]
    pg_pid = sdir / "postgres" / "postmaster.pid"
    if pg_pid.exists():
        leaders.append(int(pg_pid.read_text().split()[0]))
    pids = []
    for pid in leaders:
        try:
            proc = psutil.Process(pid)
            pids += [proc.pid, *(c.pid for c in proc.children(recursive=True))]
        except psutil.NoSuchProcess:
            pass
    return pids


def listening(pids: list[int]) -> set[tuple[str, int]]:
    found = set()
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        found |= {(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}
    return found


def http_status(url: str, auth: tuple[str, str] | None = None) -> int:
    req = urllib.request.Request(url)
    if auth:
        import base64
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_stack_up_write_down_up(root, monkeypatch):
    """Slow (about 50 s): PostgreSQL, SeaweedFS and the MLflow server started twice, for real."""
    t0 = time.time()
    sdir = root / ".stack"
    res = lifelong_stack(root, "up", "--workers", "1")  # one uvicorn worker starts faster on a small machine
    cfg = json.loads((sdir / "stack.json").read_text())
    uri = f"http://127.0.0.1:{cfg['mlflow']['port']}"
    assert f"MLFLOW_TRACKING_URI={uri}" in res.stdout
    for secret in (cfg["postgres"]["password"], cfg["s3"]["secret_key"], cfg["mlflow"]["password"]):
        assert secret not in res.stdout + res.stderr, "a secret was printed"
    for name in ("stack.json", "mlflow.env", "s3.env", "s3.json", "mlflow_auth.ini", "seaweedfs.options"):
        assert stat.S_IMODE((sdir / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(sdir.stat().st_mode) in (0o700, 0o711)  # 0711 as root: the postgres user passes through
    env = dict(line.split("=", 1) for line in (sdir / "mlflow.env").read_text().splitlines())
    assert env["MLFLOW_TRACKING_URI"] == uri
    assert stackclient.client_env(root, uri) == {k: env[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    print(f"up: {time.time() - t0:.1f} s")

    # An MLflow client with the generated user: an experiment, a run with a metric and an artifact, a model version.
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    import mlflow

    mlflow.set_tracking_uri(uri)
    exp_id = mlflow.create_experiment("stack-it")
    weights = root / "weights.txt"
    weights.write_text("w" * 100)
    with mlflow.start_run(experiment_id=exp_id) as run:
        mlflow.log_metric("loss", 0.25)
        mlflow.log_artifact(str(weights), artifact_path="files")
        # The cheapest model there is: a LoggedModel holding one file (no flavor, no environment capture).
        logged = mlflow.initialize_logged_model(name="model", experiment_id=exp_id)
        mlflow.MlflowClient().log_model_artifact(logged.model_id, str(weights))
        mlflow.finalize_logged_model(logged.model_id, "READY")
    mv = mlflow.register_model(f"models:/{logged.model_id}", MODEL)
    assert mv.version == "1"
    print(f"client: {time.time() - t0:.1f} s")

    # The rows are in PostgreSQL, the artifact in the bucket.
    import boto3
    import psycopg2

    with psycopg2.connect(stack.backend_uri(cfg)) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM model_versions")
        assert cur.fetchone()[0] == 1
        cur.execute("SELECT value FROM metrics WHERE key = 'loss'")
        assert cur.fetchone()[0] == 0.25
    s3 = boto3.client("s3", endpoint_url=cfg["s3"]["endpoint_url"], aws_access_key_id=cfg["s3"]["access_key"],
                      aws_secret_access_key=cfg["s3"]["secret_key"], region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="mlflow", Prefix="artifacts/")["Contents"]]
    assert f"artifacts/{exp_id}/{run.info.run_id}/artifacts/files/weights.txt" in keys, keys
    assert f"artifacts/{exp_id}/models/{logged.model_id}/artifacts/weights.txt" in keys, keys

    # basic-auth: nobody gets in without the password, neither to the REST API nor to the artifacts.
    assert http_status(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1") == 401
    assert http_status(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1", ("lifelong", "wrong")) == 401
    assert http_status(f"{uri}/api/2.0/mlflow-artifacts/artifacts/{exp_id}") == 401
    assert http_status(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1",
                       (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])) == 200

    # Every listening socket of the stack is on 127.0.0.1 (and the known ports are among them: not vacuous).
    pids = stack_pids(sdir)
    addrs = listening(pids)
    assert {a for a, _ in addrs} == {"127.0.0.1"}, addrs
    ports = {p for _, p in addrs}
    assert {cfg["postgres"]["port"], cfg["mlflow"]["port"], *cfg["s3"]["ports"].values()} <= ports, addrs

    assert lifelong_stack(root, "status").returncode == 0

    # down: every process gone, status says so.
    lifelong_stack(root, "down")
    alive = [p for p in pids if procs.alive(p)]  # a zombie nobody reaped yet is gone
    assert not alive, alive
    assert lifelong_stack(root, "status", check=False).returncode == stack.EXIT_DOWN
    print(f"down: {time.time() - t0:.1f} s")

    # A stored port taken by someone else: one clear error, and nothing half-up.
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the TIME_WAITs mlflow left
        squatter.bind(("127.0.0.1", cfg["mlflow"]["port"]))
        squatter.listen()
        res = lifelong_stack(root, "up", check=False)
    assert res.returncode == 1 and f"port {cfg['mlflow']['port']}" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (sdir / "postgres" / "postmaster.pid").exists()
    assert lifelong_stack(root, "status", check=False).returncode == stack.EXIT_DOWN

    # up again: same ports, same credentials, the model version and its artifacts are still there.
    lifelong_stack(root, "up")
    assert json.loads((sdir / "stack.json").read_text())["mlflow"] == cfg["mlflow"] | {"workers": 1}
    client = mlflow.MlflowClient(uri)
    assert client.get_model_version(MODEL, "1").source == f"models:/{logged.model_id}"
    assert client.get_run(run.info.run_id).data.metrics["loss"] == 0.25
    got = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="files/weights.txt",
                                              dst_path=str(root / "dl"))
    assert Path(got).read_text() == "w" * 100
    assert lifelong_stack(root, "up").returncode == 0  # idempotent: already up
    print(f"up again: {time.time() - t0:.1f} s")
    lifelong_stack(root, "down")
    assert lifelong_stack(root, "down").returncode == 0  # idempotent


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_a_path_the_postgres_user_cannot_reach_is_one_clear_error(tmp_path):
    """pytest's tmp_path lies under /tmp/pytest-of-root (0700): the postgres user cannot pass."""
    res = lifelong_stack(tmp_path, "up", check=False)
    assert res.returncode == 1
    assert "cannot reach" in res.stderr and "--dir" in res.stderr and "chmod o+x" in res.stderr, res.stderr
    assert lifelong_stack(tmp_path, "status", check=False).returncode == stack.EXIT_DOWN
