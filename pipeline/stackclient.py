"""What a client of the team stack (`lifelong stack`, pipeline/services/stack.py) needs, and no more:
where its state is, and the MLflow user's credentials when the tracking URI is the stack's server.

The stage glue reads the stack through this module, never through the services: a stage that talks to
`http://127.0.0.1:<port>` gets the generated MLflow user of this checkout's stack without the user
exporting it, and a stage on any other tracking URI gets nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

STACK_DIR_ENV = "LIFELONG_STACK_DIR"
HOST = "127.0.0.1"  # every component of the stack listens here and nowhere else


def stack_dir(root: Path) -> Path:
    """The stack's state directory: $LIFELONG_STACK_DIR, else <root>/.stack."""
    return Path(os.environ.get(STACK_DIR_ENV) or Path(root) / ".stack").resolve()


def state_file(sdir: Path) -> Path:
    return sdir / "stack.json"


def load_config(sdir: Path) -> dict | None:
    """stack.json, or None before the first `up` (or when this user may not read it)."""
    try:
        return json.loads(state_file(sdir).read_text())
    except (FileNotFoundError, PermissionError):
        return None


def tracking_uri(cfg: dict) -> str:
    """The stack's MLflow server, as clients address it."""
    return f"http://{HOST}:{cfg['mlflow']['port']}"


def _same_server(a: str, b: str) -> bool:
    def norm(uri: str) -> str:
        return uri.strip().rstrip("/").lower().replace("://localhost", "://127.0.0.1")
    return norm(a) == norm(b)


def client_env(root: Path, tracking_uri_: str | None) -> dict[str, str]:
    """MLFLOW_TRACKING_USERNAME/PASSWORD when `tracking_uri_` is this repository's stack's MLflow
    (so `mlflow.tracking_uri: http://127.0.0.1:<port>` or $MLFLOW_TRACKING_URI is all a user sets);
    {} for any other URI, or when there is no stack."""
    cfg = load_config(stack_dir(root))
    if not cfg or not tracking_uri_ or not _same_server(tracking_uri_, tracking_uri(cfg)):
        return {}
    return {"MLFLOW_TRACKING_USERNAME": cfg["mlflow"]["username"],
            "MLFLOW_TRACKING_PASSWORD": cfg["mlflow"]["password"]}
