"""The MLflow UI as a person sees it: `lifelong ui` in a real headless Chromium, with screenshots.

    python -m pipeline.devtools.uicheck [--scenario label] [--run diffusion-finetune] [--out ui-check]

Over the repository in the current directory (its params.yaml and tracking store), it starts
`lifelong ui` on a free port, waits for /health, opens the pages a person opens after `lifelong
repro` and checks that what they look for is on screen:

- the registered model `<experiment>-<scenario>-<run>` (#/models/<name>): its versions, with the
  aliases `task-1` ... `task-<N>`;
- the last task's version (#/models/<name>/versions/<v>): its tags `parent_version` and
  `data_digest`, and the link to the run that trained it;
- the experiment: it opens on its runs, not on GenAI traces (#/experiments/<id>), and the runs table
  (#/experiments/<id>/runs) shows the chain's parent run `<scenario>/<run>`, whose expanded row
  shows the task runs `task-<k> <scenario>/<run>`;
- the last task's run, model metrics tab (#/experiments/<id>/runs/<run id>/model-metrics): a chart
  card titled `train/loss`.

It writes <out>/registered-model.png, model-version.png, experiment.png, runs.png, run-charts.png
(full page) and <out>/report.json (each check: what was looked for, where, found or not), and exits
1 listing what was not found (2: the names could not be resolved, or the UI did not start). The UI
server (its whole process group) and the browser are always stopped at the end.

Chromium: Debian's /usr/bin/chromium (or $LIFELONG_CHROMIUM), driven by the `playwright` package;
no browser download.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.services import procs

CHROMIUM = os.environ.get("LIFELONG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START_S = 120  # `lifelong ui` imports MLflow's server (~15 s on 2 cores)
VISIBLE_S = 45  # how long a check waits for something to show: the UI is a slow single-page app
VIEWPORT = {"width": 1600, "height": 1200}
LOSS_METRICS = {"diffusion": "train/loss", "gan": "train/loss_g"}  # by family: the generator's loss
# MLflow 3.17 UI selectors (the JS bundle in mlflow/server/js/build): the + button of a parent run's
# name cell in the runs table (ag-grid rows carry the run id as row-id), and a metric chart card.
EXPAND_BUTTON = 'button[data-component-id*="runnamecellrenderer"]'
CHART_CARD = '[data-testid="experiment-view-compare-runs-card"]'
# The element's centre is inside the viewport and the topmost element there is the element itself
# (or inside it, or contains it).
ON_SCREEN_JS = """e => {
  const r = e.getBoundingClientRect();
  const x = Math.min(Math.max(r.left + r.width / 2, 0), window.innerWidth - 1);
  const y = Math.min(Math.max(r.top + r.height / 2, 0), window.innerHeight - 1);
  if (r.width === 0 || r.height === 0 || r.bottom < 0 || r.top > window.innerHeight) return false;
  const top = document.elementFromPoint(x, y);
  return !!top && (e === top || e.contains(top) || top.contains(e));
}"""
URL_LINE = re.compile(r"\[lifelong ui\] (http://\S+)")


class UIError(Exception):
    """The UI could not be started or the names could not be resolved."""


# --- the UI server --------------------------------------------------------------------------------

class UIServer:
    """`lifelong ui --port 0` in its own process group, over the repository `cwd`."""

    def __init__(self, cwd: Path, env: dict | None = None) -> None:
        self.cwd, self.env = Path(cwd), env
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self.output: list[str] = []

    def start(self, timeout: float = SERVER_START_S) -> str:
        env = {**os.environ, **(self.env or {})}
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.services.cli", "ui", "--port", "0"], cwd=self.cwd,
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        found = threading.Event()

        def pump() -> None:  # keeps reading, so the server never blocks on a full pipe
            for line in self.proc.stdout:
                self.output.append(line)
                m = URL_LINE.search(line)
                if m and not found.is_set():
                    self.url = m.group(1)
                    found.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.time() + timeout
        while not found.wait(0.2):
            if self.proc.poll() is not None or time.time() > deadline:
                raise UIError(f"`lifelong ui` did not start (exit {self.proc.poll()}):\n{self.log()}")
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return self.url
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise UIError(f"`lifelong ui` at {self.url} never answered /health:\n{self.log()}")
            time.sleep(0.3)

    def log(self, lines: int = 40) -> str:
        return "".join(self.output[-lines:])

    def stop(self) -> None:
        """SIGTERM to the whole process group, SIGKILL after the grace (pipeline/services/procs.py)."""
        if self.proc is not None:
            procs.stop([self.proc])

    def __enter__(self) -> "UIServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # REST reads through the (read-only) server itself
    def get(self, path: str, **query) -> dict:
        url = f"{self.url}/api/2.0/mlflow/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        with urllib.request.urlopen(url, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(f"{self.url}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())


# --- what to look for ------------------------------------------------------------------------------

@dataclass
class Target:
    """The names of one run chain, as the pipeline writes them (pipeline/registry.py, pipeline/tracking.py)."""

    experiment: str
    scenario: str
    run: str
    tasks: int
    model: str = ""
    experiment_id: str = ""
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> version
    version: str = ""  # the last task's version
    version_run_id: str = ""
    parent_run: str = ""  # run names
    task_runs: list[str] = field(default_factory=list)
    task_run_ids: dict[str, str] = field(default_factory=dict)


def resolve(ui: UIServer, scenario: str | None, run: str | None) -> Target:
    """The chain to look at, from params.yaml, and its ids from the store (through the UI's REST API)."""
    from pipeline.params import load_params
    from pipeline.registry import model_name

    params = load_params(ui.cwd / "params.yaml")
    chains = [(s, r) for s, r in params.runs() if (scenario in (None, s)) and (run in (None, r))]
    if not chains:
        raise UIError(f"no run chain in params.yaml matches scenario={scenario} run={run}: {params.runs()}")
    for sc, rn in chains:  # the first chain that has a registered model
        name = model_name(params, sc, rn)
        try:
            model = ui.get("registered-models/get", name=name)["registered_model"]
        except urllib.error.HTTPError:
            continue
        break
    else:
        raise UIError(f"none of {[model_name(params, s, r) for s, r in chains]} is registered: run `lifelong repro`")
    n = params.num_tasks_of(sc)
    t = Target(experiment=params.experiment, scenario=sc, run=rn, tasks=n, model=name,
               parent_run=f"{sc}/{rn}", task_runs=[f"task-{k} {sc}/{rn}" for k in range(1, n + 1)])
    t.aliases = {a["alias"]: a["version"] for a in model.get("aliases", [])}
    exp = ui.get("experiments/get-by-name", experiment_name=params.experiment)["experiment"]
    t.experiment_id = exp["experiment_id"]
    last = t.aliases.get(f"task-{n}") or max((v["version"] for v in model.get("latest_versions", [])), key=int,
                                             default="")
    if last:
        mv = ui.get("model-versions/get", name=name, version=last)["model_version"]
        t.version, t.version_run_id = last, mv.get("run_id", "")
    runs = ui.post("runs/search", {"experiment_ids": [t.experiment_id], "max_results": 1000,
                                   "filter": f"attributes.run_name LIKE '{sc}/{rn}%'"}).get("runs", [])
    for r in runs:
        t.task_run_ids.setdefault(r["info"]["run_name"], r["info"]["run_id"])
    return t


# --- the browser checks ----------------------------------------------------------------------------

@dataclass
class Check:
    page: str
    url: str
    looked_for: str
    found: bool
    detail: str = ""
    seconds: float = 0.0  # how long it took to show (or to give up)


class Session:
    def __init__(self, page, base: str, out: Path) -> None:
        self.page, self.base, self.out = page, base, out
        self.checks: list[Check] = []
        self.denied: list[str] = []  # requests the read-only server refused (writes the UI attempted)
        self.errors: list[str] = []
        self.warnings: list[str] = []  # on screen, but hard for a person to read
        page.on("response", lambda r: r.status == 403 and self.denied.append(f"{r.request.method} {r.url}"))
        page.on("pageerror", lambda e: self.errors.append(str(e)[:300]))

    def open(self, route: str) -> str:
        url = f"{self.base}/#{route}"
        self.page.goto(url, wait_until="domcontentloaded")
        return url

    def expect(self, what: str, locator, *, page_name: str, timeout_s: float = VISIBLE_S) -> bool:
        """Whether `locator` shows within timeout_s, scrolled into view as a person would scroll, and
        is really on screen: not clipped by a scrolling table, not covered by another element."""
        url, t0 = self.page.url, time.time()
        try:
            first = locator.first
            first.wait_for(state="visible", timeout=timeout_s * 1000)
            first.scroll_into_view_if_needed(timeout=10_000)
            ok = bool(first.evaluate(ON_SCREEN_JS))
            detail = "" if ok else "in the page but not on screen (clipped or covered)"
        except Exception as err:  # playwright's TimeoutError, or a locator that cannot resolve
            ok, detail = False, str(err).splitlines()[0][:300]
        self.checks.append(Check(page_name, url, what, ok, detail, round(time.time() - t0, 1)))
        return ok

    def record(self, what: str, ok: bool, *, page_name: str, detail: str = "") -> bool:
        self.checks.append(Check(page_name, self.page.url, what, ok, detail))
        return ok

    def settle(self, ms: int = 1000) -> None:
        """A moment for late renders before a screenshot (the UI polls, so the network never idles)."""
        self.page.wait_for_timeout(ms)

    def shot(self, name: str) -> Path:
        path = self.out / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def _text(page, text: str, exact: bool = True):
    return page.get_by_text(text, exact=exact)


def check_registered_model(s: Session, t: Target) -> None:
    page, name = s.page, "registered-model"
    s.open(f"/models/{urllib.parse.quote(t.model, safe='')}")
    s.expect(f"the model's name {t.model!r} as the page title", page.get_by_role("heading", name=t.model),
             page_name=name)
    for k in range(1, t.tasks + 1):
        alias = f"task-{k}"
        v = t.aliases.get(alias)
        if not v:
            s.record(f"a version with alias {alias!r}", False, page_name=name,
                     detail=f"no version of {t.model} has it (aliases: {sorted(t.aliases)})")
            continue
        s.expect(f"version {v} in the versions table", page.get_by_role("link", name=f"Version {v}", exact=True),
                 page_name=name)
        s.expect(f"alias {alias!r} shown as a badge", page.get_by_text(re.compile(rf"^@?\s*{re.escape(alias)}$")),
                 page_name=name)
    s.settle()
    s.shot(name)


def check_model_version(s: Session, t: Target) -> None:
    page, name = s.page, "model-version"
    if not t.version:
        s.record("a version of the last task", False, page_name=name, detail=f"{t.model} has no versions")
        return
    s.open(f"/models/{urllib.parse.quote(t.model, safe='')}/versions/{t.version}")
    s.expect(f"'Version {t.version}' as the page title", page.get_by_role("heading", name=re.compile(
        rf"Version {t.version}\b")), page_name=name)
    # The tags table scrolls inside the page (4 rows show): each check scrolls its row into view, the
    # screenshot shows the last one, parent_version.
    for tag in ("data_digest", "parent_version"):
        s.expect(f"the version tag {tag!r}", _text(page, tag), page_name=name)
    run_name = f"task-{t.tasks} {t.scenario}/{t.run}"
    if t.version_run_id:
        s.expect(f"the source run link to {run_name!r} ({t.version_run_id})",
                 page.locator(f'a[href*="{t.version_run_id}"]'), page_name=name)
    else:
        s.record(f"the source run link to {run_name!r}", False, page_name=name, detail="the version has no run_id")
    s.settle()
    s.shot(name)


def check_experiment(s: Session, t: Target) -> None:
    page = s.page
    s.open(f"/experiments/{t.experiment_id}")
    # The landing view: the runs table (the experiment is tagged as custom model development), not traces.
    s.expect("the experiment opens on its runs table", _text(page, t.parent_run), page_name="experiment")
    route = urllib.parse.unquote(page.url.split("#", 1)[-1])
    s.record(f"the landing route is the runs view, not traces ({route})",
             "/traces" not in route and not re.search(r"/overview|/chat-sessions|/evaluation", route),
             page_name="experiment")
    s.settle()
    s.shot("experiment")

    name = "runs"
    s.open(f"/experiments/{t.experiment_id}/runs")
    s.expect(f"the chain's parent run {t.parent_run!r}", _text(page, t.parent_run), page_name=name)
    # Nested runs sit under their parent's row, collapsed: expand it as a person does (the + button
    # in the run-name cell of the parent's row).
    parent_id = t.task_run_ids.get(t.parent_run, "")
    first_task = t.task_runs[0]
    if parent_id and not _visible(_text(page, first_task), 3):
        s.expect("the parent row's expand button",
                 page.locator(f'[role="row"][row-id="{parent_id}"] {EXPAND_BUTTON}'), page_name=name)
        try:
            page.locator(f'[role="row"][row-id="{parent_id}"] {EXPAND_BUTTON}').first.click(timeout=10_000)
        except Exception:
            pass
    for task_run in t.task_runs:
        if s.expect(f"the task run {task_run!r} nested under it", _text(page, task_run), page_name=name):
            if _truncated(_text(page, task_run).first):
                s.warnings.append(f"{name}: the run name {task_run!r} is cut off (…) in the runs table's "
                                  "Run Name column (hovering shows it)")
    s.settle()
    s.shot(name)


def check_run_charts(s: Session, t: Target) -> None:
    page, name = s.page, "run-charts"
    run_id = t.version_run_id or t.task_run_ids.get(t.task_runs[-1], "")
    if not run_id:
        s.record("the last task's run", False, page_name=name, detail="no run found")
        return
    s.open(f"/experiments/{t.experiment_id}/runs/{run_id}/model-metrics")
    s.expect(f"the run page of {t.task_runs[-1]!r}", page.get_by_role("heading", name=t.task_runs[-1]),
             page_name=name)
    # After `evaluate`, the eval/* sections come first and charts below the fold are not rendered:
    # filter the charts to the training curves, as a person would, with the page's search box.
    try:
        page.get_by_placeholder("Search metric charts").fill("train/", timeout=10_000)
    except Exception:
        pass  # no search box in this MLflow version: look for the card as it is
    # MLflow groups the charts by the metric's prefix: section "train", card title "loss" (the full
    # name is the title's tooltip); the card holds a plotly chart.
    loss = LOSS_METRICS[t.run.split("-", 1)[0]]
    card = page.locator(CHART_CARD).filter(has=page.locator(f'h4[title="{loss}"]'))
    s.expect(f"a chart card titled with the metric {loss!r}", card, page_name=name)
    s.expect(f"a plotted curve in the {loss!r} card", card.locator(".js-plotly-plot svg.main-svg"),
             page_name=name)
    s.settle(1500)
    s.shot(name)


def _truncated(locator) -> bool:
    """Whether the element's text (or its cell's) is cut off by CSS (text-overflow: ellipsis)."""
    try:
        return bool(locator.evaluate("""e => { for (let n = e, i = 0; n && i < 4; n = n.parentElement, i++)
            if (n.scrollWidth > n.clientWidth + 1 && getComputedStyle(n).overflow !== 'visible') return true;
            return false; }"""))
    except Exception:
        return False


def _visible(locator, timeout_s: float) -> bool:
    try:
        locator.first.wait_for(state="visible", timeout=timeout_s * 1000)
        return True
    except Exception:
        return False


def run_checks(ui: UIServer, out: Path, scenario: str | None = None, run: str | None = None) -> dict:
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        raise UIError(f"no Chromium at {CHROMIUM} (apt install chromium, or set LIFELONG_CHROMIUM)")
    target = resolve(ui, scenario, run)
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            s = Session(page, ui.url, out)
            for check in (check_registered_model, check_model_version, check_experiment, check_run_charts):
                try:
                    check(s, target)
                except Exception as err:  # a page that broke the check itself: record it, go on
                    s.record(f"{check.__name__} ran", False, page_name=check.__name__, detail=repr(err)[:300])
                    try:
                        s.shot(check.__name__.removeprefix("check_").replace("_", "-"))
                    except Exception:
                        pass
        finally:
            browser.close()
    return {"url": ui.url, "target": asdict(target), "checks": [asdict(c) for c in s.checks],
            "warnings": s.warnings, "denied_requests": s.denied, "page_errors": s.errors,
            "screenshots": sorted(p.name for p in out.glob("*.png")),
            "ok": all(c.found for c in s.checks)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.devtools.uicheck", description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", help="default: the first scenario of params.yaml with a registered model")
    ap.add_argument("--run", help="default: the first run of that scenario with a registered model")
    ap.add_argument("--out", default="ui-check", help="folder for the screenshots and report.json")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    ui = UIServer(Path.cwd())
    try:
        ui.start()
        report = run_checks(ui, out, args.scenario, args.run)
    except UIError as err:
        print(f"uicheck: {err}", file=sys.stderr)
        return 2
    finally:
        ui.stop()
    (out / "report.json").write_text(json.dumps(report, indent=2))
    for c in report["checks"]:
        print(f"[{'ok' if c['found'] else 'MISSING'}] {c['page']}: {c['looked_for']}")
    for w in report["warnings"]:
        print(f"[warning] {w}")
    for r in report["denied_requests"]:
        print(f"[warning] the UI attempted a write, refused by the read-only server: {r}")
    print(f"screenshots and report.json in {out}")
    if not report["ok"]:
        missing = [f"{c['page']}: {c['looked_for']}" + (f" ({c['detail']})" if c["detail"] else "")
                   for c in report["checks"] if not c["found"]]
        print("uicheck: not on screen:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
