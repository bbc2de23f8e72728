"""params.yaml: the root model, loading, and where the repository is.

Validated before anything runs; every error names the key path (e.g. ``train.steps_per_task``) and
what is allowed, so a typo fails in a second with the fix, not after a Ray cluster has started.
The sections live in `sections`, the Ray Tune search space in `search`. Nothing here imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import Field, ValidationError, model_validator

from lifelong.catalog import CATALOG
from pipeline.params.search import (
    TUNABLE,
    UNTUNABLE_RUNS,
    SpaceParam,
    TuneParams,
    split_run,
    tunable_for,
    tune_run,
    tune_space_errors,
    with_values,
)
from pipeline.params.sections import (
    ClassifierParams,
    DataParams,
    DistillParams,
    EvalParams,
    GANParams,
    ImageDataParams,
    ImageTaskParams,
    LifelongGANParams,
    MlflowParams,
    ModelParams,
    PiggybackGANParams,
    PiggybackParams,
    RayParams,
    ScenarioParams,
    ScenariosParams,
    StorageParams,
    TrainParams,
    _Section,
)

SCENARIOS = ("label", "image")
TASKS_KEY = {"label": "data.tasks", "image": "image_data.tasks"}
# Which model families a scenario's data can train: label-conditioned generation has both, the
# image-conditioned (A -> B) scenario only GANs (BicycleGAN-style).
SCENARIO_FAMILIES: dict[str, tuple[str, ...]] = {"label": ("diffusion", "gan"), "image": ("gan",)}


class ParamsError(ValueError):
    """params.yaml is invalid; the message names every bad key path."""


SEED_SUFFIX = "-seed"


def chain_name(run: str, i: int) -> str:
    """The chain of `run` trained with seed index i: the run's own name for i = 0 (so a single-seed
    experiment names everything as before), `<run>-seed<i>` otherwise."""
    return run if i == 0 else f"{run}{SEED_SUFFIX}{i}"


def split_chain(chain: str) -> tuple[str, int]:
    """`chain_name`'s inverse: (run, seed index)."""
    run, sep, index = chain.rpartition(SEED_SUFFIX)
    if sep and index.isdigit() and int(index) > 0:
        return run, int(index)
    return chain, 0


def check_chain(params: "Params", scenario: str, chain: str) -> None:
    """A stage's --run: one of the scenario's chains (its runs, and `<run>-seed<i>` for i < eval.seeds)."""
    chains = [c for _, c in params.chains(scenario)]
    if chain not in chains:
        runs = getattr(params.scenarios, scenario).runs
        seeds = f" (with eval.seeds {params.eval.seeds}, its chains are {chains})" if params.eval.seeds > 1 else ""
        raise SystemExit(f"--run {chain!r} is not in params.yaml scenarios.{scenario}.runs {runs}{seeds}")


def all_runs(scenario: str) -> list[str]:
    """Every run that applies to a scenario, in catalog order: what `scenarios.<s>.runs: all` means."""
    return [f"{f}-{m}" for f in SCENARIO_FAMILIES[scenario] for m in CATALOG[f]]


def run_errors(scenario: str, runs: list[str]) -> list[str]:
    where = f"scenarios.{scenario}.runs"
    errors = []
    families = SCENARIO_FAMILIES[scenario]
    allowed = all_runs(scenario)
    for run in runs:
        family, method = split_run(run)
        if family not in CATALOG or method not in CATALOG[family]:
            errors.append(f"{where}: unknown run {run!r} (a run is <family>-<method>); allowed: {', '.join(allowed)}")
        elif family not in families:
            errors.append(f"{where}: {run!r} does not apply to the {scenario} scenario: it trains only "
                          f"{' or '.join(families)} models; allowed: {', '.join(allowed)}")
    if len(set(runs)) != len(runs):
        errors.append(f"{where}: lists a run twice")
    return errors


class Params(_Section):
    experiment: str = Field("lifelong-fmnist", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 0
    scenarios: ScenariosParams
    data: DataParams = DataParams()
    image_data: ImageDataParams = ImageDataParams()
    gan: GANParams = GANParams()
    lifelong_gan: LifelongGANParams = LifelongGANParams()
    piggyback_gan: PiggybackGANParams = PiggybackGANParams()
    piggyback: PiggybackParams = PiggybackParams()  # diffusion-piggyback
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    distill: DistillParams = DistillParams()
    eval: EvalParams = EvalParams()
    classifier: ClassifierParams = ClassifierParams()
    storage: StorageParams = StorageParams()
    ray: RayParams = RayParams()
    mlflow: MlflowParams = MlflowParams()
    tune: TuneParams = TuneParams()

    @model_validator(mode="before")
    @classmethod
    def _expand_all_runs(cls, data):
        """`scenarios.<s>.runs: all`: every run that applies to the scenario (the full method matrix)."""
        scenarios = data.get("scenarios") if isinstance(data, dict) else None
        if not isinstance(scenarios, dict):
            return data
        expanded = {sc: ({**value, "runs": all_runs(sc)} if isinstance(value, dict) and value.get("runs") == "all"
                         else value) for sc, value in scenarios.items()}
        return {**data, "scenarios": expanded}

    @model_validator(mode="after")
    def _cross_checks(self) -> "Params":
        errors = []
        for scenario in SCENARIOS:
            errors += run_errors(scenario, getattr(self.scenarios, scenario).runs)
        size = self.data.image_size_px
        if any(run.startswith("gan-") for _, run in self.runs()) and size & (size - 1):
            errors.append(f"data.image_size_px: the GAN runs need a power of two (8, 16, 32, ... 256), got {size}")
        if not self.runs():
            errors.append("scenarios: no scenario has runs; give e.g. scenarios.label.runs: [diffusion-finetune]")
        if self.scenarios.image.runs:  # the classifier (FID features, accuracy) learns data.tasks' classes only
            known = {c for classes in self.data.tasks for c in classes}
            for i, task in enumerate(self.image_data.tasks):
                unknown = sorted(set(task.classes or []) - known)
                if unknown:
                    errors.append(f"image_data.tasks[{i}].classes: class(es) {unknown} of task {task.name!r} are not in "
                                  f"data.tasks, so the classifier that measures the image scenario never learns them; "
                                  f"add them to data.tasks or drop them from the task")
        errors += tune_space_errors(self.tune)
        if self.tune.tasks > len(self.data.tasks):
            errors.append(f"tune.tasks: ({self.tune.tasks}) must be <= the {len(self.data.tasks)} tasks of data.tasks")
        if errors:  # one message, every bad key path on its own line (see _format)
            raise ValueError("\n  ".join(errors))
        return self

    def num_tasks_of(self, scenario: str) -> int:
        return len(self.data.tasks) if scenario == "label" else len(self.image_data.tasks)

    def runs(self) -> list[tuple[str, str]]:
        """Every (scenario, run) pair `dvc repro` trains, in params order."""
        return [(sc, run) for sc in SCENARIOS for run in getattr(self.scenarios, sc).runs]

    def chains(self, scenario: str | None = None) -> list[tuple[str, str]]:
        """Every (scenario, chain) `dvc repro` trains: each run once per training seed (`eval.seeds`),
        named `chain_name(run, i)`; in params order, a run's seeds together."""
        return [(sc, chain_name(run, i)) for sc, run in self.runs() if scenario in (None, sc)
                for i in range(self.eval.seeds)]

    def with_seed_index(self, i: int) -> "Params":
        """These params for the chain of training seed index i: `seed` is `seed + i`."""
        return self.model_copy(update={"seed": self.seed + i})

    def task_classes(self, scenario: str, task: int) -> list[int]:
        """Classes of task `task` (1-based); pix2pix tasks have none."""
        if scenario == "label":
            return list(self.data.tasks[task - 1])
        return list(self.image_data.tasks[task - 1].classes or [])

    @property
    def num_tasks(self) -> int:  # the label scenario's (what the search trains)
        return len(self.data.tasks)

    @property
    def num_classes(self) -> int:
        return max(c for classes in self.data.tasks for c in classes) + 1


def _format(err: ValidationError, source: str) -> str:
    lines = [f"{source} is invalid:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if not path:  # a cross-field check: its message starts with the key it is about
            path, _, msg = msg.partition(": ")
        if e["type"] == "extra_forbidden":
            if path.endswith(".task_chain"):
                msg = ("no longer kept in params.yaml: the project derives each scenario's task chain from "
                       f"{TASKS_KEY.get(path.split('.')[1], 'data.tasks')}; delete this key")
            elif path == "train.storage_path":
                msg = "moved: the storage root of shards and checkpoints is `storage.uri` (a path or s3://); rename the key"
            else:
                msg = "unknown key (typo?); see params.yaml in the repository for the allowed keys"
        lines.append(f"  {path}: {msg}")
    return "\n".join(lines)


def parse_params(raw: dict, source: str = "params.yaml") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format(err, source)) from None


def read_raw(path: str | Path | None = None) -> dict:
    """params.yaml as a plain mapping (not validated)."""
    path = Path(path) if path else repo_root() / "params.yaml"
    if not path.exists():
        raise ParamsError(f"{path} not found; run from the repository root or set DVC_ROOT")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise ParamsError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} must be a mapping of sections (data:, train:, ...)")
    return raw


def load_params(path: str | Path | None = None) -> Params:
    path = Path(path) if path else repo_root() / "params.yaml"
    return parse_params(read_raw(path), str(path))


def repo_root() -> Path:
    """DVC exports DVC_ROOT to every stage; outside DVC the current directory is the root."""
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


__all__ = [
    "CATALOG", "ClassifierParams", "DataParams", "DistillParams", "EvalParams", "GANParams", "ImageDataParams",
    "ImageTaskParams", "LifelongGANParams", "MlflowParams", "ModelParams", "Params", "ParamsError",
    "PiggybackGANParams", "PiggybackParams", "RayParams", "SEED_SUFFIX", "chain_name", "check_chain", "split_chain", "SCENARIOS", "StorageParams",
    "SCENARIO_FAMILIES", "ScenarioParams", "ScenariosParams",
    "SpaceParam", "TASKS_KEY", "TUNABLE", "TrainParams", "TuneParams", "UNTUNABLE_RUNS", "load_params",
    "parse_params", "read_raw", "repo_root", "run_errors", "split_run", "tunable_for", "tune_run",
    "tune_space_errors", "with_values",
]
