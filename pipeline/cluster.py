"""The Ray cluster of a stage: the one place that attaches to it or starts a local one, what a stage
needs before its Ray Train workers run on other machines (the code and environment it ships to them, a
check that they run the driver's code), and a preflight that refuses a multi-node cluster the stage
cannot work on.

- `connect_ray(params)`: ray.init, attached to ray.address / $RAY_ADDRESS or a private local cluster.

- `runtime_env(...)`: the job's runtime_env. Workers always get the MLflow, AWS (artifact store),
  NCCL and lifelong variables of the driver; attached to a cluster this process did not start, they
  also get the project itself as `working_dir` (code only: no data, runs, venv or MLflow stores).
- `same_code(loop, digest)`: the worker loop, wrapped to fail first thing when the `lifelong` and
  `pipeline` packages a worker imports differ from the driver's (`code_digest`).
- `multi_node_problem(...)`: on a cluster of several nodes, a sqlite/file tracking store or a run
  folder / checkout on a local disk would fail late (or silently split the results); this names the
  key to set instead, before anything trains.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pipeline.layout import TELEMETRY_OFF, layout
from pipeline.params import Params, ParamsError, repo_root

# Forwarded to every worker: where to log (MLflow), the artifact store's credentials (AWS), the
# collective backend's settings (NCCL) and the pipeline's own switches (LIFELONG_*).
FORWARDED_PREFIXES = ("MLFLOW_", "AWS_", "NCCL_", "LIFELONG_")
# Never shipped as code: data, runs, environments and stores, which workers read by path or URI.
# gitignore patterns: a leading "/" anchors at the project root (a bare "data" would also drop the
# lifelong/data package).
SHIP_EXCLUDES = ["/.git", "/.venv", "/venv", "/.dvc/cache", "/.dvc/tmp", "/data", "/runs", "/results", "/models",
                 "/mlartifacts", "/mlruns", "/mlflow.db", "/.stack", "/tune", "/docs", "/benchmarks", "/dvc_plots",
                 "/ui-check", "__pycache__", "*.pyc", "*.egg-info"]
CODE_PACKAGES = ("lifelong", "pipeline")
# `lifelong repro` starts one local cluster for its stages and names it here: they need no shipped code.
LOCAL_CLUSTER_ENV = "LIFELONG_LOCAL_CLUSTER"
# File systems every node of a cluster can mount at the same path.
SHARED_FS_TYPES = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "cephfs", "lustre", "glusterfs", "gpfs",
                   "beegfs", "9p", "virtiofs", "fuse.sshfs", "fuse.gcsfuse", "fuse.s3fs", "fuse.juicefs",
                   "fuse.mountpoint-s3", "fuse.glusterfs", "fuse.cephfs", "efs"}


def ray_address(params: Params) -> str | None:
    """The cluster to attach to: ray.address, else $RAY_ADDRESS (the one `lifelong repro` keeps up)."""
    return params.ray.address or os.environ.get("RAY_ADDRESS")


def connect_ray(params: Params, **env: str) -> str:
    """Attach to the configured cluster, or start a private local one; returns its GCS address.

    The one place that calls ray.init. Workers get the MLflow, artifact-store, NCCL and lifelong
    settings of this process (plus `env`); attached to a cluster that `lifelong repro` did not start
    here, they also get this checkout's code as the job's working_dir (runtime_env, below). A local
    cluster's dashboard (the State API TorchTrainer.fit polls) binds 127.0.0.1.
    """
    import ray

    if not ray.is_initialized():
        address = ray_address(params)
        job_env = runtime_env(repo_root(), dict(os.environ), ship_code=ships_code(address, os.environ),
                              extra={**TELEMETRY_OFF, **env})
        if address:
            ray.init(address=address, runtime_env=job_env, log_to_driver=True)
        else:  # "local": never attach to another cluster that happens to run on this host
            ray.init(address="local", runtime_env=job_env, include_dashboard=True, dashboard_host="127.0.0.1")
    return ray.get_runtime_context().gcs_address


def check_cluster(params: Params) -> None:
    """Before any worker starts: a cluster of several nodes needs a tracking server and shared files
    (multi_node_problem, below); one clear error naming the key otherwise."""
    import ray

    lay = layout()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    # What the workers read and write by path: the storage root, or with none the checkout (data/shards, runs/).
    root = params.storage.uri
    paths = {"storage.uri": root} if root else {"storage.uri is null: the checkout holds shards and runs": lay.root}
    problem = multi_node_problem(nodes=nodes, tracking_uri=lay.tracking_uri(params), mounts=read_mounts(), paths=paths)
    if problem:
        raise ParamsError(problem)



class CodeMismatch(RuntimeError):
    """A worker imports other code than the driver's."""


def code_digest(root: Path | None = None) -> str:
    """sha256 over the project's Python code (lifelong/ and pipeline/ *.py, by relative path), as
    imported: `root` defaults to the folder the imported `pipeline` package lives in."""
    if root is None:
        import pipeline

        root = Path(pipeline.__file__).resolve().parent.parent
    h = hashlib.sha256()
    for package in CODE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def runtime_env(root: Path, env: dict[str, str], *, ship_code: bool, extra: dict[str, str]) -> dict:
    """The job's runtime_env: forwarded variables of `env` (+ `extra`), and, when `ship_code`, the
    project at `root` as the workers' working_dir (Ray uploads it once per job, content-addressed)."""
    env_vars = {k: v for k, v in env.items() if k.startswith(FORWARDED_PREFIXES)}
    env_vars.update(extra)
    out: dict = {"env_vars": env_vars}
    if ship_code:
        out.update(working_dir=str(root), excludes=list(SHIP_EXCLUDES))
    return out


def ships_code(address: str | None, env: dict[str, str]) -> bool:
    """Attached to a cluster (an address) that is not the local one `lifelong repro` started: the
    other nodes have no copy of this checkout, or another one."""
    return bool(address) and env.get(LOCAL_CLUSTER_ENV) != address


def same_code(loop, expected: str):
    """`loop`, run only where the imported code is the driver's (`expected` = its code_digest)."""

    def checked(config):
        here = code_digest()
        if here != expected:
            import socket

            import pipeline

            raise CodeMismatch(
                f"a Ray Train worker on {socket.gethostname()} imports lifelong/pipeline from "
                f"{Path(pipeline.__file__).parent.parent} with code {here[:12]}, the driver's is {expected[:12]}: "
                "attach through ray.address / RAY_ADDRESS (the stage then ships its code as the job's "
                "working_dir), or install the driver's commit on every node")
        return loop(config)

    return checked


def mount_of(path: Path, mounts: list[tuple[str, str]]) -> tuple[str, str]:
    """The (mount point, fs type) holding `path`: the longest mount point that is a prefix of it.
    mounts: (mount point, fs type) pairs, e.g. from `read_mounts()`."""
    path = Path(os.path.abspath(path))
    best = ("/", "")
    for point, fstype in mounts:
        p = Path(point)
        if (path == p or p in path.parents) and len(point) >= len(best[0]):
            best = (point, fstype)
    return best


def read_mounts() -> list[tuple[str, str]]:
    """This process's mounts as (mount point, fs type), from /proc/self/mounts ([] if unreadable)."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 3:
            out.append((fields[1].replace("\\040", " "), fields[2]))
    return out


def multi_node_problem(*, nodes: int, tracking_uri: str, paths: dict[str, Path],
                       mounts: list[tuple[str, str]]) -> str | None:
    """Why a stage cannot run its workers on a cluster of `nodes` nodes, or None.

    paths: what the workers read or write by path, as {the key or folder that sets it: path}: a
    path on a local disk of the driver's machine is not there on the other nodes.
    """
    if nodes <= 1:
        return None
    scheme = tracking_uri.split("://", 1)[0] if "://" in tracking_uri else "file"
    if scheme in ("sqlite", "file"):
        return (f"the Ray cluster has {nodes} nodes but the MLflow tracking store is {tracking_uri}, which "
                "the other nodes cannot write: set mlflow.tracking_uri in params.yaml (or MLFLOW_TRACKING_URI) "
                "to a tracking server every node reaches (`lifelong stack up`, README 'Team MLflow')")
    for key, path in paths.items():
        if "://" in str(path):
            continue
        point, fstype = mount_of(Path(path), mounts)
        if fstype not in SHARED_FS_TYPES:
            return (f"the Ray cluster has {nodes} nodes but {path} ({key}) is on a local file system "
                    f"({fstype or 'unknown'} at {point}), which the other nodes cannot read: set storage.uri in "
                    "params.yaml to s3://bucket/prefix or to a file system every node mounts at the same path "
                    "(README 'Run on a cluster')")
    return None
