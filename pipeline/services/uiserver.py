"""`lifelong ui`'s server: MLflow's own tracking-server app, read-only for the pipeline's stores.

`mlflow ui` as it comes lets anyone who can reach the port write: create runs, edit the registry
(aliases, tags, delete versions) and upload files, either through the artifact proxy (into
./mlartifacts of the server's directory) or through /ajax-api/2.0/mlflow/upload-artifact, which writes
straight into a run's file:// artifact root, here <repo>/mlartifacts. This server shows everything
the MLflow UI shows and changes nothing, in three layers:

1. the database is opened read-only by the database itself: SQLite through a `file:` URI with
   `mode=ro` (any INSERT/UPDATE/DELETE fails with "attempt to write a readonly database");
   PostgreSQL with `default_transaction_read_only=on` for every session;
2. artifacts are served only from where they already are (file:// roots are read in place): the
   artifact proxy (`mlflow-artifacts:/`, uploads and multipart uploads) is off, and the default
   artifact root and proxy destination point at a private temporary folder in any case;
3. an ASGI filter in front of MLflow's app answers 403 to every request that is not a read:
   methods other than GET/HEAD/OPTIONS, except the POST endpoints that only search
   (`READ_POSTS`). It closes the one write that does not go through the database, upload-artifact
   into a run's file:// root. (The AI-gateway proxy is unconfigured here, MLFLOW_DEPLOYMENTS_TARGET
   unset: it answers the UI's GET with no endpoints and forwards nothing.)

The UI page itself gets two defaults (`UI_DEFAULTS`) for a browser that has not chosen otherwise:
experiments open on their runs ("Model training"), not on MLflow 3's GenAI traces overview, and the
AI assistant panel (which needs writes) stays closed.

The server runs in its own temporary working directory (removed at exit), so nothing MLflow creates
relative to its CWD lands in the repository. Usage (what `lifelong ui` runs):

    python -m pipeline.services.uiserver --store sqlite:////abs/mlflow.db [--host 127.0.0.1] [--port 5000]

`--port 0` binds a free port; the URL is printed once the socket is bound:
`[lifelong ui] http://127.0.0.1:<port> (read-only)`.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

URL_PREFIX = "[lifelong ui] "
# POST endpoints of MLflow 3.17/3.18 that only read (searches whose filters do not fit in a URL), as
# the path after /api/<version>/mlflow/ or /ajax-api/<version>/mlflow/.
READ_POSTS = frozenset({
    "runs/search", "experiments/search", "experiments/search-datasets", "logged-models/search",
    "registered-models/get-latest-versions", "traces/search", "traces/batchGetInfos", "traces/metrics",
    "traces/calculate-filter-correlation", "datasets/search", "issues/search", "prompt-optimization/jobs/search",
    "artifacts/presigned-download-url",
})
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# MLflow's GraphQL endpoint: its schema's "mutations" are two searches (mlflowSearchRuns, mlflowSearchDatasets).
GRAPHQL_PATH = "/graphql"
_API = re.compile(r"^/(?:ajax-)?api/\d+\.\d+/?mlflow/(?P<rest>.+)$")
# The one GET that acts: it runs the AI assistant's pending turn (tools included). Its POSTs are refused anyway.
_ACTING_GET = re.compile(r"/mlflow/assistant/sessions/[^/]+/stream$")


def is_read(method: str, path: str) -> bool:
    """Whether a request to MLflow's server only reads."""
    path = re.sub(r"/{2,}", "/", path).rstrip("/") or "/"
    if method in READ_METHODS:
        return not _ACTING_GET.search(path)
    if method != "POST":
        return False
    if path == GRAPHQL_PATH:
        return True
    m = _API.match(path)
    return bool(m) and m["rest"] in READ_POSTS


# The UI's own defaults, for a browser that has not chosen yet (its localStorage, per origin): MLflow
# 3.17's UI takes the experiment view from a global "GenAI | Model training" switch that starts on
# GenAI (the experiment's mlflow.experimentKind tag does not change it), so an experiment would open
# on an empty traces overview; and the AI assistant panel, which needs writes, would open by itself.
UI_DEFAULTS = {
    "mlflow.workflowType_v1": json.dumps("machine_learning"),
    "mlflow.assistant.panelOpen_v1": "false",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
}
_DEFAULTS_SCRIPT = (
    "<script>(function(){try{var d=%s;for(var k in d){if(localStorage.getItem(k)===null)"
    "localStorage.setItem(k,d[k]);}}catch(e){}})();</script>" % json.dumps(UI_DEFAULTS)
).encode()


class ReadOnly:
    """ASGI middleware: 403 PERMISSION_DENIED for every request `is_read` does not accept; the UI's
    page (GET /) gets `UI_DEFAULTS`."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not is_read(scope["method"], scope["path"]):
            body = json.dumps({"error_code": "PERMISSION_DENIED",
                               "message": "lifelong ui is read-only: this server never writes to the "
                                          "pipeline's tracking store, registry or artifacts"}).encode()
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["method"] == "GET" and scope["path"] == "/":
            await self.app(scope, receive, _with_defaults(send))
            return
        await self.app(scope, receive, send)


def _with_defaults(send):
    """A `send` that inserts _DEFAULTS_SCRIPT at the top of an HTML page (buffered; index.html is 1 kB)."""
    start: dict = {}
    chunks: list[bytes] = []

    async def wrapped(message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
            return
        if message["type"] != "http.response.body" or not start:
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body = b"".join(chunks)
        headers = [(k, v) for k, v in start.get("headers", [])]
        names = {k.lower(): v for k, v in headers}
        if (start.get("status") == 200 and names.get(b"content-type", b"").startswith(b"text/html")
                and b"content-encoding" not in names and b"<head>" in body):
            body = body.replace(b"<head>", b"<head>" + _DEFAULTS_SCRIPT, 1)
            headers = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"etag")]
            headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return wrapped


class StoreError(Exception):
    """The store cannot be served read-only (missing database, unsupported URI)."""


def read_only_uri(uri: str) -> str:
    """The same store, opened read-only by the database itself."""
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+")[0]
    if scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if path.startswith("file:"):  # already a SQLite URI filename: add mode=ro
            base, _, query = path.partition("?")
            query = dict(parse_qsl(query))
            query.update(mode="ro", uri="true")
            return f"sqlite:///{base}?{urlencode(query)}"
        if not path or path == ":memory:":
            raise StoreError(f"{uri}: no database file to show")
        db = Path(path.split("?")[0]).resolve()  # a relative path is relative to the caller's CWD
        if not db.is_file():
            raise StoreError(f"{db} does not exist yet: run `lifelong repro` (or any stage) first")
        return f"sqlite:///file:{quote(str(db))}?mode=ro&uri=true"
    if scheme in ("postgresql", "postgres"):
        query = dict(parse_qsl(parts.query))
        options = query.get("options", "")
        if "default_transaction_read_only" not in options:
            query["options"] = f"{options} -c default_transaction_read_only=on".strip()
        return urlunsplit(parts._replace(query=urlencode(query)))
    raise StoreError(f"{uri}: `lifelong ui` serves a sqlite or postgresql store read-only; "
                     "a tracking server (http://...) has its own UI, open it in a browser")


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _exit_on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def serve(store_uri: str, *, host: str = "127.0.0.1", port: int = 5000) -> int:
    ro_uri = read_only_uri(store_uri)
    if "mlflow.server" in sys.modules:  # its settings are read from the environment at import
        raise RuntimeError("pipeline.services.uiserver.serve must run before mlflow.server is imported")
    from mlflow.server.constants import (
        ARTIFACT_ROOT_ENV_VAR,
        ARTIFACTS_DESTINATION_ENV_VAR,
        BACKEND_STORE_URI_ENV_VAR,
        REGISTRY_STORE_URI_ENV_VAR,
        SERVE_ARTIFACTS_ENV_VAR,
    )

    scratch = tempfile.mkdtemp(prefix="lifelong-ui-")
    try:
        os.environ.update({
            BACKEND_STORE_URI_ENV_VAR: ro_uri, REGISTRY_STORE_URI_ENV_VAR: ro_uri,
            # only for experiments created through this server, which none can be (read-only)
            ARTIFACT_ROOT_ENV_VAR: Path(scratch, "artifacts").as_uri(),
            ARTIFACTS_DESTINATION_ENV_VAR: Path(scratch, "artifacts").as_uri(),
            "_MLFLOW_SGI_NAME": "uvicorn",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no background jobs (they write)
            "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
        })
        os.environ.pop(SERVE_ARTIFACTS_ENV_VAR, None)  # --no-serve-artifacts
        os.environ.pop("MLFLOW_DEPLOYMENTS_TARGET", None)  # the gateway proxy forwards nowhere
        os.chdir(scratch)  # MLflow creates a few things relative to its CWD
        sock = _bind(host, port)
        import uvicorn
        from mlflow.server.fastapi_app import app

        # Open both stores once, now: a wrong URI or an out-of-date schema fails here, not in the browser.
        from mlflow.server.handlers import _get_model_registry_store, _get_tracking_store

        _get_tracking_store()
        _get_model_registry_store()
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        print(f"{URL_PREFIX}http://{shown}:{bound_port} (read-only) over {store_uri}", flush=True)
        config = uvicorn.Config(ReadOnly(app), log_level="warning", access_log=False, workers=1)
        # uvicorn stops gracefully on SIGINT/SIGTERM, then raises the signal again once its own handlers
        # are gone: turn that (and a closed terminal's SIGHUP) into an exit that runs the clean-up below.
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, _exit_on_signal)
        uvicorn.Server(config).run(sockets=[sock])
        return 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(store_uri: str, *, host: str = "127.0.0.1", port: int = 5000) -> int:
    """`serve`, with the errors a user can fix as one line on stderr and exit code 2."""
    try:
        return serve(store_uri, host=host, port=port)
    except StoreError as err:
        print(f"lifelong ui: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            print(f"lifelong ui: {host}:{port} is in use: pass --port N (0: any free port)", file=sys.stderr)
            return 2
        raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.services.uiserver", description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="tracking/registry store URI (sqlite:///... or postgresql://...)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5000, help="0: a free port")
    args = ap.parse_args(argv)
    return run(args.store, host=args.host, port=args.port)


if __name__ == "__main__":
    sys.exit(main())
