"""What a train stage depends on, and the stage list DVC cannot derive itself.

Two facts live here, and nowhere else:

- `RESULT_KEYS`: the params.yaml keys that change a train stage's result, per model family; each run
  adds its method's own section (`lifelong.catalog`: `lifelong_gan` for gan-lifelong_gan, `distill`
  for the replay methods, none for the baselines). dvc.yaml's train stages declare exactly these
  keys (a test checks it) and `pipeline/train.py` keys its checkpoint directory on exactly these
  values. Everything else in `train:` is operational (logging, checkpoint cadence, retries, worker
  placement), and so are `storage`, `ray` and `mlflow`: changing it neither re-runs a stage nor loses a checkpoint.
- the stage plan: DVC cannot compute "task k - 1" inside dvc.yaml, so the train stages of each
  scenario (one per run and task, each naming its predecessor) are listed in `pipeline/stages.yaml`,
  generated from params.yaml (`scenarios.*.runs`, `eval.seeds`, `data.tasks`, `image_data.tasks`). `lifelong repro`
  and `lifelong plan` write it; under plain `dvc repro`, the `check` stage rewrites a stale plan and
  stops with the one-line fix (run `dvc repro` again) before any other stage runs.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from lifelong.catalog import run_spec
from pipeline.params import SCENARIO_FAMILIES, SCENARIOS, Params, split_chain

# The keys of a family that change what a train stage produces. `experiment` names the registered
# model; num_workers and use_gpu change the numbers (batch split across DDP ranks, bf16 autocast).
RESULT_KEYS: dict[str, tuple[str, ...]] = {
    "diffusion": ("seed", "experiment", "model", "train.steps_per_task", "train.batch_size", "train.lr",
                  "train.ema_decay", "train.ema_warmup", "train.grad_clip", "train.num_workers", "train.use_gpu"),
    "gan": ("seed", "experiment", "gan", "train.grad_clip", "train.num_workers", "train.use_gpu"),
}
FAMILY_SECTION = {"diffusion": "model", "gan": "gan"}  # the section that sizes each family's networks
# ... and those that only say how to run it (documented; a test checks the two lists cover `train:`).
OPERATIONAL_KEYS = ("train.cpus_per_worker", "train.placement", "train.local_mode", "train.checkpoint_every_steps",
                    "train.log_every_steps", "train.max_failures", "train.loader_workers", "storage", "ray",
                    "mlflow")
# train.use_tuned reaches the train stages through the `tuned` stage's per-run file, results/tune/applied/<run>.json.

PLAN_FILE = "pipeline/stages.yaml"
_HEADER = """\
# GENERATED from params.yaml by `lifelong plan` (also run by `lifelong repro`, checked by the `check`
# stage): the train stages of each scenario, one per chain (a run and one of its eval.seeds training
# seeds) and task, each naming the task it continues from, and the chains. dvc.yaml iterates over these.
# Edit data.tasks, image_data.tasks, scenarios.*.runs or eval.seeds instead.
"""


def method_section(run: str) -> str:
    """The params.yaml section of a run's own knobs; runs without one repeat their family's section,
    so that dvc.yaml can list `${item.options}` for every run."""
    spec = run_spec(run)
    return spec.options or FAMILY_SECTION[spec.family]


def result_keys(run: str) -> tuple[str, ...]:
    """Every params.yaml key path a run's train stages depend on."""
    spec = run_spec(run)
    return RESULT_KEYS[spec.family] + ((spec.options,) if spec.options else ())


def result_values(params: Params, run: str) -> dict:
    """The values of `result_keys(run)` in params: what the checkpoint directory is keyed on."""
    out = {}
    for key in result_keys(run):
        value = params
        for part in key.split("."):
            value = getattr(value, part)
        out[key] = value.model_dump() if hasattr(value, "model_dump") else value
    return out


def stage_name(scenario: str, chain: str, k: int) -> str:
    """The DVC stage that trains task k of a chain (a run, or a run's extra training seed `<run>-seed<i>`;
    dvc.yaml: train_<scenario>_<family>@<chain>-task<k>)."""
    return f"train_{scenario}_{run_spec(split_chain(chain)[0]).family}@{chain}-task{k}"


def chain_stages(params: Params, scenario: str, chain: str) -> list[str]:
    """The DVC stages of one chain, in order: its task-0 receipt, each task, its evaluation.
    They share nothing with another chain but the stages `check`, `prepare*`, `classifier`, `tuned`."""
    tasks = [stage_name(scenario, chain, k) for k in range(1, params.num_tasks_of(scenario) + 1)]
    return [f"start_{scenario}@{chain}", *tasks, f"evaluate_{scenario}@{chain}"]


def stage_plan(params: Params) -> dict:
    """The vars of dvc.yaml: {"plan": {scenario: {family: {"<chain>-task<k>": {chain, run, task, prev,
    options}}}}, "chains": {scenario: [chain, ...]}}. A chain is a run trained with one training seed
    (eval.seeds of them per run); `run` names the tuned file it applies."""
    plan: dict = {}
    chains: dict = {}
    for scenario in SCENARIOS:
        # every (scenario, family) dvc.yaml iterates over must exist, even when empty
        plan[scenario] = {family: {} for family in SCENARIO_FAMILIES[scenario]}
        chains[scenario] = [chain for _, chain in params.chains(scenario)]
        for chain in chains[scenario]:
            run = split_chain(chain)[0]
            family = run_spec(run).family
            for k in range(1, params.num_tasks_of(scenario) + 1):
                plan[scenario][family][f"{chain}-task{k}"] = {
                    "chain": chain, "run": run, "task": k, "prev": k - 1, "options": method_section(run)}
    return {"plan": plan, "chains": chains}


def render(params: Params) -> str:
    return _HEADER + yaml.safe_dump(stage_plan(params), sort_keys=False, default_flow_style=None, width=120)


def write_plan(params: Params, root: Path) -> bool:
    """Write pipeline/stages.yaml for params; True if it changed (DVC must re-read dvc.yaml)."""
    path = root / PLAN_FILE
    text = render(params)
    if path.exists() and path.read_text() == text:
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True
