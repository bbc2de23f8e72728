"""What a stage ships to a cluster's workers and what it refuses before they start (pipeline/cluster.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from zipfile import ZipFile

import pytest

from pipeline.cluster import (
    LOCAL_CLUSTER_ENV,
    SHIP_EXCLUDES,
    CodeMismatch,
    code_digest,
    mount_of,
    multi_node_problem,
    runtime_env,
    same_code,
    ships_code,
)

REPO = Path(__file__).resolve().parents[2]


def test_workers_get_the_tracking_store_artifact_store_and_nccl_settings_only():
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "MLFLOW_TRACKING_PASSWORD": "p",
           "AWS_ENDPOINT_URL": "http://127.0.0.1:8333", "AWS_SECRET_ACCESS_KEY": "s", "NCCL_SOCKET_IFNAME": "eth0",
           "LIFELONG_TORCH_THREADS": "1", "HOME": "/root", "PATH": "/usr/bin", "DVC_ROOT": "/repo"}
    out = runtime_env(Path("/repo"), env, ship_code=False, extra={"RAY_CHDIR_TO_TRIAL_DIR": "0"})
    assert out == {"env_vars": {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "MLFLOW_TRACKING_PASSWORD": "p",
                                "AWS_ENDPOINT_URL": "http://127.0.0.1:8333", "AWS_SECRET_ACCESS_KEY": "s",
                                "NCCL_SOCKET_IFNAME": "eth0", "LIFELONG_TORCH_THREADS": "1",
                                "RAY_CHDIR_TO_TRIAL_DIR": "0"}}
    shipped = runtime_env(Path("/repo"), env, ship_code=True, extra={})
    assert shipped["working_dir"] == "/repo" and shipped["excludes"] == SHIP_EXCLUDES


def test_code_ships_to_a_cluster_this_run_did_not_start_here():
    assert not ships_code(None, {})  # a private local cluster: same machine, same files
    assert ships_code("10.0.0.1:6379", {})
    assert not ships_code("127.0.0.1:6379", {LOCAL_CLUSTER_ENV: "127.0.0.1:6379"})  # `lifelong repro`'s own
    assert ships_code("10.0.0.1:6379", {LOCAL_CLUSTER_ENV: "127.0.0.1:6379"})


def test_the_shipped_working_dir_is_the_code_without_data_runs_or_stores(tmp_path):
    """Ray's own zipper over a copy of this checkout with the state a run leaves: the packages
    (lifelong/data and lifelong/models included) go, data/models/runs/stores/venv do not."""
    from ray._private.runtime_env.packaging import _zip_files

    root = tmp_path / "repo"
    for name in ("lifelong", "pipeline"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, root / name)
    for state in ("data/shards/task-1/train-000000.tar", "models/classifier.pt", "runs/x/checkpoints/final.pt",
                  "mlartifacts/1/m.pt", "mlflow.db", ".venv/bin/python", ".stack/stack.json", "results/report.md",
                  ".git/HEAD", ".dvc/cache/files/md5/ab/cd", "lifelong/__pycache__/x.pyc"):
        (root / state).parent.mkdir(parents=True, exist_ok=True)
        (root / state).write_bytes(b"x")
    _zip_files(str(root), SHIP_EXCLUDES, str(tmp_path / "wd.zip"), include_gitignore=False)
    names = set(ZipFile(tmp_path / "wd.zip").namelist())
    assert {"lifelong/data/loader.py", "lifelong/models/gan.py", "pipeline/train.py", "params.yaml"} <= names
    assert not {n for n in names if n.split("/")[0] in {"data", "models", "runs", "mlartifacts", "mlflow.db", ".venv",
                                                          ".stack", "results", ".git"}}
    assert not {n for n in names if n.startswith(".dvc/cache") or n.endswith(".pyc")}


def test_code_digest_follows_the_code(tmp_path):
    for name in ("lifelong", "pipeline"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    digest = code_digest(tmp_path)
    assert digest == code_digest(REPO) == code_digest()  # as imported here
    (tmp_path / "data.txt").write_text("not code")
    assert code_digest(tmp_path) == digest
    train = tmp_path / "pipeline" / "train.py"
    train.write_text(train.read_text() + "\n# edited\n")
    assert code_digest(tmp_path) != digest


def test_a_worker_with_other_code_fails_before_its_loop_runs():
    ran = []
    same_code(ran.append, code_digest())({"x": 1})
    assert ran == [{"x": 1}]
    with pytest.raises(CodeMismatch, match="imports lifelong/pipeline from .* with code .*the driver's is 0123456789ab"):
        same_code(ran.append, "0123456789ab" + "0" * 52)({"x": 2})
    assert ran == [{"x": 1}]


MOUNTS = [("/", "overlay"), ("/mnt/shared", "nfs4"), ("/mnt/shared/scratch", "ext4"), ("/home/u", "ext4")]


def test_mount_of_is_the_longest_prefix():
    assert mount_of(Path("/mnt/shared/repo/runs"), MOUNTS) == ("/mnt/shared", "nfs4")
    assert mount_of(Path("/mnt/shared/scratch/x"), MOUNTS) == ("/mnt/shared/scratch", "ext4")
    assert mount_of(Path("/mnt/sharedX/y"), MOUNTS) == ("/", "overlay")  # a prefix of the name is not a parent


def test_one_node_needs_nothing_shared():
    assert multi_node_problem(nodes=1, tracking_uri="sqlite:////repo/mlflow.db",
                              paths={"storage.uri": Path("/home/u/runs")}, mounts=MOUNTS) is None


def test_several_nodes_need_a_tracking_server_and_shared_folders():
    shared = {"storage.uri": Path("/mnt/shared/lifelong")}
    assert multi_node_problem(nodes=2, tracking_uri="http://10.0.0.1:5000", paths=shared, mounts=MOUNTS) is None
    for uri in ("sqlite:////mnt/shared/repo/mlflow.db", "/mnt/shared/mlruns", "file:///mnt/shared/mlruns"):
        msg = multi_node_problem(nodes=3, tracking_uri=uri, paths=shared, mounts=MOUNTS)
        assert msg and "3 nodes" in msg and "mlflow.tracking_uri" in msg and "lifelong stack up" in msg, msg
    msg = multi_node_problem(nodes=2, tracking_uri="http://10.0.0.1:5000", mounts=MOUNTS,
                             paths={"storage.uri": Path("/home/u/runs")})
    assert msg and "/home/u/runs (storage.uri)" in msg and "ext4 at /home/u" in msg and "s3://" in msg, msg
    assert multi_node_problem(nodes=2, tracking_uri="http://h:5000", mounts=MOUNTS,
                              paths={"storage.uri": "s3://bucket/lifelong"}) is None


def test_a_real_ray_job_runs_the_shipped_code_not_the_installed_one(tmp_path):
    """A real local Ray cluster, the job's runtime_env from `runtime_env(ship_code=True)` over an edited
    copy of the project: the worker imports the copy (its digest), the driver's variables arrive."""
    import ray

    root = tmp_path / "checkout"
    for name in ("lifelong", "pipeline"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "pipeline" / "train.py").write_text((root / "pipeline" / "train.py").read_text() + "\n# the copy\n")
    (root / "data").mkdir()
    (root / "data" / "big.bin").write_bytes(b"\0" * 1024)
    expected = code_digest(root)
    assert expected != code_digest()

    env = runtime_env(root, {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1", "HOME": "/nope"}, ship_code=True,
                      extra={"RAY_USAGE_STATS_ENABLED": "0"})
    ray.init(address="local", runtime_env=env, num_cpus=1, include_dashboard=False)
    try:
        @ray.remote
        def where():
            import os

            import pipeline
            from pipeline.cluster import code_digest as digest

            return digest(), pipeline.__file__, os.environ.get("MLFLOW_TRACKING_URI"), os.path.exists("data")

        got, path, uri, has_data = ray.get(where.remote(), timeout=120)
    finally:
        ray.shutdown()
    assert got == expected and not path.startswith(str(REPO)) and not path.startswith(str(root))
    assert uri == "http://127.0.0.1:1" and not has_data


def test_cluster_test_control_socket_one_json_line_each_way(tmp_path, monkeypatch):
    """`lifelong cluster-test`'s control protocol (what COMMAND asks the harness): one JSON line each way;
    an error reply is one ClusterTestError."""
    import json
    import socket
    import threading

    from pipeline.devtools import clustertest

    path = tmp_path / "control.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def serve(replies):
        for reply in replies:
            conn, _ = server.accept()
            with conn:
                req = json.loads(clustertest._read_line(conn))
                conn.sendall(json.dumps(reply(req)).encode() + b"\n")

    thread = threading.Thread(target=serve, args=([lambda r: {"got": r}, lambda r: {"error": "no such node"}],))
    thread.start()
    monkeypatch.setenv(clustertest.ENV_CONTROL, str(path))
    try:
        assert clustertest.kill_node("w1") == {"got": {"op": "kill-node", "name": "w1", "mode": "raylet"}}
        with pytest.raises(clustertest.ClusterTestError, match="no such node"):
            clustertest.status()
    finally:
        thread.join(timeout=10)
        server.close()
