"""The MLflow UI as a person sees it after `lifelong repro`: pipeline/devtools/uicheck.py in headless Chromium
over a real finished run chain. Called by test_pipeline.py on its chain (two runs, two tasks, trained
by the real train stages in a clone), so no second chain is trained for it."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from tests.integration.conftest import run

CHROMIUM = os.environ.get("LIFELONG_CHROMIUM", "/usr/bin/chromium")
SHOTS = ("registered-model", "model-version", "experiment", "runs", "run-charts")


def assert_ui_shows_the_chain(repo: Path, out: Path, model: str, aliases: set[str]) -> None:
    """uicheck finds the chain's model, its versions (aliases) and its loss curve on screen, the
    screenshots are real pages, and the browser's visit changed nothing in the stores."""
    # Never skipped: scripts/setup.sh installs Debian's chromium (and pyproject's dev extra playwright).
    assert os.path.exists(CHROMIUM), f"no Chromium at {CHROMIUM}: `apt-get install chromium` (scripts/setup.sh does)"
    from PIL import Image

    before = _store_state(repo)
    res = run([sys.executable, "-m", "pipeline.devtools.uicheck", "--out", str(out)], repo, check=False, timeout=600)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    missing = [f"{c['page']}: {c['looked_for']} ({c['detail']})" for c in report.get("checks", []) if not c["found"]]
    assert res.returncode == 0, f"not on screen: {missing}\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    assert report["ok"] and len(report["checks"]) >= 15
    assert report["target"]["model"] == model
    assert set(report["target"]["aliases"]) == aliases

    for name in SHOTS:
        path = out / f"{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
        with Image.open(path) as img:
            assert img.size[0] >= 1600 and img.size[1] >= 1000, (name, img.size)
            colors = img.convert("RGB").getcolors(maxcolors=1 << 20)
            assert colors is None or len(colors) > 200, f"{name}.png is nearly blank ({len(colors)} colors)"
        assert path.stat().st_size > 30_000, f"{name}.png is only {path.stat().st_size} bytes"

    # The browser looked around (and the UI tried its few writes): the stores are as they were.
    assert _store_state(repo) == before


def _store_state(repo) -> dict:
    files = [repo / "mlflow.db", *sorted(p for p in (repo / "mlartifacts").rglob("*") if p.is_file())]
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
