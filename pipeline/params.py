"""The schema of params.yaml: one pydantic model per section, validated before anything runs.

Every error names the key path (e.g. ``train.steps_per_task``) and what is allowed, so a typo in
params.yaml fails in a second with the fix, not after a Ray cluster has started.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Kept in sync with lifelong.methods.METHODS (a test checks it); duplicated here so that validating
# params.yaml does not import torch (~6 s) before it can say "typo".
FAMILY_METHODS: dict[str, tuple[str, ...]] = {
    "diffusion": ("finetune", "joint", "generative_replay", "generative_distillation"),
    "gan": ("finetune", "joint", "standalone", "lifelong_gan", "piggyback_gan"),
}
# Which model families a scenario's data can train: label-conditioned generation has both, the
# image-conditioned (A -> B) scenario only GANs (BicycleGAN-style).
SCENARIO_FAMILIES: dict[str, tuple[str, ...]] = {"label": ("diffusion", "gan"), "image": ("gan",)}
CONDITIONS = ("edges", "silhouette", "downsample")  # lifelong.data.paired.CONDITIONS
DATASET_NAMES = ("fashion_mnist", "digits", "image_folder")
FEATURE_EXTRACTORS = ("lifelong-cnn", "inception-v3-compat")


class ParamsError(ValueError):
    """params.yaml is invalid; the message names every bad key path."""


class _Section(BaseModel):
    # extra="forbid": a typo'd key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    dataset: Literal["fashion_mnist", "digits", "image_folder"] = "fashion_mnist"
    root: str | None = None  # folder with the idx files / image folders; else env LIFELONG_DATA_ROOT, Debian's package
    download: bool = False  # allow torchvision's download (needs internet)
    image_size_px: int = Field(16, ge=8, le=256)  # images are resized once, in `prepare`
    tasks: list[list[int]] = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]  # classes added by task 1, 2, ...
    train_per_class: int | None = Field(None, gt=0)  # cap on training images per class (None: all)
    test_per_class: int | None = Field(None, gt=0)  # cap on test images per class (None: all)
    samples_per_shard: int = Field(2000, gt=0)

    @field_validator("tasks")
    @classmethod
    def _tasks_partition_classes(cls, tasks: list[list[int]]) -> list[list[int]]:
        if not tasks:
            raise ValueError("needs at least one task, e.g. [[0, 1], [2, 3]]")
        seen: set[int] = set()
        for k, classes in enumerate(tasks, start=1):
            if not classes:
                raise ValueError(f"task {k} is empty; every task needs at least one class")
            for c in classes:
                if c < 0:
                    raise ValueError(f"task {k} has class {c}; classes are non-negative integers")
                if c in seen:
                    raise ValueError(f"class {c} appears in more than one task (task {k}); tasks must not overlap")
                seen.add(c)
        return tasks


class ImageTaskParams(_Section):
    """One image-conditioned task: derived from data.dataset (condition + classes) or a pix2pix folder (root)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    condition: Literal["edges", "silhouette", "downsample"] | None = None  # A = condition(B), B from data.dataset
    classes: list[int] | None = None  # the classes of data.dataset whose images are B
    root: str | None = None  # pix2pix-style folder: root/train/*.jpg with A | B side by side (and val/ or test/)
    direction: Literal["AtoB", "BtoA"] = "AtoB"  # pix2pix: which half is the condition

    @model_validator(mode="after")
    def _one_source(self) -> "ImageTaskParams":
        derived = self.condition is not None or self.classes is not None
        if derived and self.root is not None:
            raise ValueError(f"task {self.name!r}: give either condition + classes (derived from data.dataset) "
                             "or root (a pix2pix folder), not both")
        if not derived and self.root is None:
            raise ValueError(f"task {self.name!r}: needs condition + classes (e.g. condition: edges, classes: [5, 7, 9]) "
                             "or root: /path/to/edges2shoes")
        if derived and (self.condition is None or not self.classes):
            raise ValueError(f"task {self.name!r}: a derived task needs both condition ({', '.join(CONDITIONS)}) "
                             "and a non-empty classes list")
        return self


class ImageDataParams(_Section):
    # Images are data.image_size_px (the classifier that measures FID sees one size).
    train_per_task: int | None = Field(1000, gt=0)  # cap on training pairs per task (None: all)
    test_per_task: int | None = Field(200, gt=0)  # cap on test pairs per task (None: all)
    samples_per_shard: int = Field(1000, gt=0)
    tasks: list[ImageTaskParams] = [
        ImageTaskParams(name="edges2footwear", condition="edges", classes=[5, 7, 9]),
        ImageTaskParams(name="edges2bags", condition="edges", classes=[8]),
        ImageTaskParams(name="silhouette2tops", condition="silhouette", classes=[0, 2, 4, 6]),
        ImageTaskParams(name="downsample2bottoms", condition="downsample", classes=[1, 3]),
    ]

    @field_validator("tasks")
    @classmethod
    def _unique_names(cls, tasks: list[ImageTaskParams]) -> list[ImageTaskParams]:
        if not tasks:
            raise ValueError("needs at least one task")
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        return tasks


class GANParams(_Section):
    """The GAN family: label-conditioned DCGAN + projection D, image-conditioned BicycleGAN."""

    width: int = Field(32, gt=0)  # base channel count of every net
    z_dim: int = Field(16, gt=0)  # noise size of the label-conditioned generator
    latent_dim: int = Field(8, gt=0)  # BicycleGAN's |z| for the image-conditioned generator
    gan_loss: Literal["lsgan", "hinge"] = "lsgan"
    steps_per_task: int = Field(300, gt=0)  # all GAN methods get the same budget
    batch_size: int = Field(64, gt=0)
    lr: float = Field(2e-4, gt=0)  # Adam(beta1 = 0.5), BicycleGAN's default


class LifelongGANParams(_Section):
    beta: float = Field(1.0, ge=0)  # weight of the distillation loss L_DL
    auxiliary: Literal["montage", "swap", "both"] = "both"  # image-conditioned: auxiliary pairs to distil on


class PiggybackGANParams(_Section):
    filter_ratio: float = Field(0.25, gt=0, le=1)  # lambda: share of each layer's filters that are new per task


class ModelParams(_Section):
    block_out_channels: list[int] = [32, 64]  # UNet width per resolution level
    layers_per_block: int = Field(1, ge=1)
    attention: bool = False  # self-attention on the lowest resolution (paper: yes; CPU default: no)
    num_train_timesteps: int = Field(1000, gt=1)  # DDPM T

    @field_validator("block_out_channels")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(c <= 0 for c in v):
            raise ValueError("must be a non-empty list of positive ints, e.g. [32, 64]")
        return v


class TrainParams(_Section):
    steps_per_task: int = Field(400, gt=0)  # optimizer steps per task (all methods get the same budget)
    batch_size: int = Field(64, gt=0)  # global batch; each worker gets batch_size // num_workers
    lr: float = Field(2e-3, gt=0)
    grad_clip: float = Field(1.0, gt=0)  # the paper clips at 1.0
    num_workers: int = Field(1, ge=1)  # Ray Train workers (DDP when >= 2)
    cpus_per_worker: int = Field(1, ge=1)  # CPUs per Ray Train worker actor; Ray sets its torch threads to this
    use_gpu: bool = False  # CUDA + NCCL + bf16 autocast
    local_mode: Literal["auto", "always", "never"] = "auto"  # auto: Ray Train local mode for 1 CPU worker
    checkpoint_every_steps: int = Field(100, gt=0)
    log_every_steps: int = Field(50, gt=0)
    max_failures: int = Field(1, ge=0)  # Ray Train FailureConfig: worker-group restarts before giving up
    loader_workers: int = Field(0, ge=0)  # DataLoader processes per Ray worker
    storage_path: str | None = None  # absolute path or URI for checkpoints; None: <repo>/runs
    use_tuned: bool = False  # train stages apply results/tune/applied.json (the `tuned` stage's pick)

    @model_validator(mode="after")
    def _batch_divides(self) -> "TrainParams":
        if self.batch_size < self.num_workers:
            raise ValueError(f"batch_size: ({self.batch_size}) must be >= num_workers ({self.num_workers})")
        return self

    @field_validator("storage_path")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        # Ray hands storage_path to pyarrow, which rejects relative paths; workers also chdir.
        if v is not None and "://" not in v and not os.path.isabs(v):
            raise ValueError(f"must be an absolute path or a URI (got {v!r}); Ray workers change directory")
        return v


class DistillParams(_Section):
    weight: float = Field(1.0, ge=0)  # lambda: weight of the replay / distillation term
    replay_ddim_steps: int = Field(2, ge=1, le=1000)  # S: DDIM steps of the teacher's replay samples


class EvalParams(_Section):
    samples_per_class: int = Field(100, gt=1)
    ddim_steps: int = Field(10, ge=1)
    feature_extractor: Literal["lifelong-cnn", "inception-v3-compat"] = "lifelong-cnn"
    kid_subset_size: int = Field(100, gt=1)  # clamped to the number of samples
    batch_size: int = Field(500, gt=0)  # generation batch


class ClassifierParams(_Section):
    epochs: int = Field(3, gt=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(1e-3, gt=0)


# Hyperparameters a search may vary: key path -> (integer?, the runs that use it). A run is
# "<family>-<method>"; "<family>-*" stands for every method of the family.
_REPLAY_RUNS = ("diffusion-generative_replay", "diffusion-generative_distillation")
TUNABLE: dict[str, tuple[bool, tuple[str, ...]]] = {
    "distill.weight": (False, _REPLAY_RUNS),  # lambda of generative replay / distillation
    "distill.replay_ddim_steps": (True, _REPLAY_RUNS),  # S
    "train.lr": (False, ("diffusion-*",)),
    "gan.lr": (False, ("gan-*",)),
    "lifelong_gan.beta": (False, ("gan-lifelong_gan",)),  # weight of L_DL
    "piggyback_gan.filter_ratio": (False, ("gan-piggyback_gan",)),  # lambda: new free filters per task
}
# The search trains a run on the label scenario and measures every seen task with the run's final
# model (piggyback_gan switched to each task's filters). Standalone keeps one model per task: its
# earlier tasks are not the current model's, so a search over it would measure the wrong thing.
UNTUNABLE_RUNS = ("gan-standalone",)


def tune_run(method: str) -> str:
    """tune.method as a run name: "gan-lifelong_gan" stays; a bare name is the diffusion method of that
    name if there is one (so "finetune" is diffusion's), else the GAN method ("lifelong_gan")."""
    if "-" in method:
        return method
    for family in ("diffusion", "gan"):
        if method in FAMILY_METHODS[family]:
            return f"{family}-{method}"
    return method


def tunable_for(run: str, key: str) -> bool:
    family, _ = split_run(run)
    return run in TUNABLE[key][1] or f"{family}-*" in TUNABLE[key][1]


class SpaceParam(_Section):
    """One searched parameter: loguniform/uniform in [low, high], int in [low, high] (both inclusive),
    choice among values, or grid: every value in order, once per sample (search_alg random only)."""

    type: Literal["loguniform", "uniform", "int", "choice", "grid"]
    low: float | None = None
    high: float | None = None
    values: list[int | float] | None = None


class TuneParams(_Section):
    # any method of the label scenario, bare (a diffusion method, or a GAN method whose name is not
    # also diffusion's) or as a run: generative_distillation, gan-lifelong_gan, gan-piggyback_gan, ...
    method: str = "generative_distillation"
    tasks: int = Field(2, ge=1)  # the search trains tasks 1..tasks of data.tasks
    steps_per_task: int = Field(120, gt=0)
    eval_every_steps: int = Field(40, gt=0)  # objective reports on the last tuned task (ASHA's rungs)
    num_samples: int = Field(6, ge=1)  # trials
    max_concurrent: int = Field(2, ge=1)
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period_steps: int = Field(40, gt=0)  # ASHA: steps of the last task before a trial can be stopped
    reduction_factor: int = Field(2, ge=2)  # ASHA keeps the top 1/reduction_factor at each rung
    search_alg: Literal["optuna", "random"] = "optuna"
    objective: Literal["mean_fid", "weighted"] = "mean_fid"
    objective_alpha: float = Field(0.5, ge=0, le=1)  # weighted: alpha*FID(last task) + (1-alpha)*forgetting
    samples_per_class: int = Field(40, gt=1)  # generated images per class for the objective's FID
    ddim_steps: int = Field(5, ge=1)
    # one search space per method (keyed as tune.method names it); the search uses tune.method's
    space: dict[str, dict[str, SpaceParam]] = {
        "generative_distillation": {
            "distill.weight": SpaceParam(type="loguniform", low=0.1, high=10),
            "distill.replay_ddim_steps": SpaceParam(type="choice", values=[1, 2, 5]),
        },
    }

    @property
    def run(self) -> str:
        """tune.method as "<family>-<method>"."""
        return tune_run(self.method)

    @property
    def method_space(self) -> dict[str, SpaceParam]:
        """The space searched now: tune.space.<tune.method>."""
        return self.space.get(self.method, {})


_SECTIONS = {"distill": DistillParams, "train": TrainParams, "gan": GANParams,  # validate a searched value
             "lifelong_gan": LifelongGANParams, "piggyback_gan": PiggybackGANParams}


def tune_space_errors(tune: TuneParams) -> list[str]:
    """Every problem of tune.method and tune.space, each naming its key path (empty: all valid)."""
    errors = []
    allowed = [f"{f}-{m}" for f, methods in FAMILY_METHODS.items() for m in methods
               if f"{f}-{m}" not in UNTUNABLE_RUNS]
    for method in dict.fromkeys([tune.method, *tune.space]):
        where = "tune.method" if method == tune.method else f"tune.space.{method}"
        run = tune_run(method)
        family, name = split_run(run)
        if run in UNTUNABLE_RUNS:
            errors.append(f"{where}: {method!r} trains one model per task: the search's objective (every seen "
                          "task, generated by the last model) does not apply; allowed: " + ", ".join(allowed))
        elif name not in FAMILY_METHODS.get(family, ()):
            errors.append(f"{where}: unknown method {method!r}; allowed: {', '.join(allowed)} "
                          "(a diffusion method may be named without 'diffusion-')")
    if not tune.method_space:
        errors.append(f"tune.space.{tune.method}: no search space for tune.method {tune.method!r}; give at least "
                      f"one parameter it uses, e.g. tune.space.{tune.method}."
                      + next((k for k in TUNABLE if tunable_for(tune.run, k)), "train.lr")
                      + ": {type: loguniform, low: 0.1, high: 10}")
    for method, space in tune.space.items():
        errors += _space_errors(tune, method, space)
    return errors + _tune_setting_errors(tune)


def _space_errors(tune: TuneParams, method: str, space: dict[str, SpaceParam]) -> list[str]:
    errors = []
    run = tune_run(method)
    for key, p in space.items():
        where = f"tune.space.{method}.{key}"
        if key not in TUNABLE:
            errors.append(f"{where}: unknown parameter; tunable: {', '.join(TUNABLE)}")
            continue
        integer, runs = TUNABLE[key]
        if not tunable_for(run, key):
            errors.append(f"{where}: method {method!r} does not use this parameter "
                          f"(only {', '.join(runs)} do)")
            continue
        if p.type in ("choice", "grid"):
            if p.low is not None or p.high is not None:
                errors.append(f"{where}: type {p.type} takes values: [...], not low/high")
            elif not p.values:
                errors.append(f"{where}: empty {p.type}; give values: [v1, v2, ...]")
            elif p.type == "grid" and tune.search_alg != "random":
                errors.append(f"{where}: type grid needs tune.search_alg: random (Optuna samples, it does not "
                              "enumerate a grid)")
            candidates = list(p.values or [])
        else:
            if p.values is not None:
                errors.append(f"{where}: type {p.type} takes low and high, not values")
                continue
            if p.low is None or p.high is None:
                errors.append(f"{where}: type {p.type} needs low and high")
                continue
            if p.low >= p.high:
                errors.append(f"{where}: empty range: low ({p.low:g}) must be < high ({p.high:g})")
                continue
            if p.type == "loguniform" and p.low <= 0:
                errors.append(f"{where}: loguniform needs low > 0 (got {p.low:g})")
                continue
            if integer and p.type != "int":
                errors.append(f"{where}: is an integer parameter; use type int or choice")
                continue
            if p.type == "int" and not (float(p.low).is_integer() and float(p.high).is_integer()):
                errors.append(f"{where}: type int needs integer low and high")
                continue
            candidates = [p.low, p.high]
        section, name = key.split(".")
        model = _SECTIONS[section]
        for v in candidates:
            if integer and not float(v).is_integer():
                errors.append(f"{where}: {v!r} is not an integer")
                break
            try:
                model.model_validate({name: int(v) if integer else v})
            except ValidationError as err:
                errors.append(f"{where}: value {v!r} is not allowed for {key}: "
                              f"{err.errors()[0]['msg'].removeprefix('Value error, ')}")
                break
    return errors


def _tune_setting_errors(tune: TuneParams) -> list[str]:
    errors = []
    if tune.eval_every_steps > tune.steps_per_task:
        errors.append(f"tune.eval_every_steps: ({tune.eval_every_steps}) must be <= tune.steps_per_task "
                      f"({tune.steps_per_task})")
    if tune.grace_period_steps > tune.steps_per_task:
        errors.append(f"tune.grace_period_steps: ({tune.grace_period_steps}) must be <= tune.steps_per_task "
                      f"({tune.steps_per_task})")
    if tune.objective == "weighted" and tune.tasks < 2:
        errors.append("tune.objective: weighted needs tune.tasks >= 2 (forgetting of earlier tasks)")
    return errors


class RayParams(_Section):
    # None: $RAY_ADDRESS if set (e.g. the cluster `lifelong repro` keeps up), else a local cluster.
    address: str | None = None


class MlflowParams(_Section):
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db


class TaskLink(_Section):
    task: int = Field(gt=0)
    prev: int = Field(ge=0)


class ScenarioParams(_Section):
    # "<family>-<method>" pairs this scenario trains, e.g. diffusion-generative_distillation,
    # gan-lifelong_gan; [] switches the scenario off.
    runs: list[str] = []
    # DVC cannot compute "k - 1" in dvc.yaml, so each train stage's predecessor is spelled out here.
    # It must list tasks 1..T of the scenario in order; `lifelong chain` prints it.
    task_chain: list[TaskLink] = []


class ScenariosParams(_Section):
    label: ScenarioParams = ScenarioParams()  # label-conditioned, class-incremental: data.tasks
    image: ScenarioParams = ScenarioParams()  # image-conditioned (A -> B): image_data.tasks


def split_run(run: str) -> tuple[str, str]:
    """ "gan-lifelong_gan" -> ("gan", "lifelong_gan")."""
    family, _, method = run.partition("-")
    return family, method


def run_errors(scenario: str, runs: list[str]) -> list[str]:
    where = f"scenarios.{scenario}.runs"
    errors = []
    families = SCENARIO_FAMILIES[scenario]
    allowed = [f"{f}-{m}" for f in families for m in FAMILY_METHODS[f]]
    for run in runs:
        family, method = split_run(run)
        if family not in FAMILY_METHODS or method not in FAMILY_METHODS[family]:
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
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    distill: DistillParams = DistillParams()
    eval: EvalParams = EvalParams()
    classifier: ClassifierParams = ClassifierParams()
    ray: RayParams = RayParams()
    mlflow: MlflowParams = MlflowParams()
    tune: TuneParams = TuneParams()

    @model_validator(mode="after")
    def _chain_matches_tasks(self) -> "Params":
        errors = []
        for scenario in SCENARIOS:
            sc = getattr(self.scenarios, scenario)
            errors += run_errors(scenario, sc.runs)
            if not sc.runs:
                continue
            expected = chain_for(self.num_tasks_of(scenario))
            if [link.model_dump() for link in sc.task_chain] != expected:
                errors.append(
                    f"scenarios.{scenario}.task_chain: must be {expected} for the {len(expected)} tasks of "
                    f"{TASKS_KEY[scenario]} (one entry per task, prev = task - 1); run `lifelong chain` to print it")
        size = self.data.image_size_px
        if any(run.startswith("gan-") for _, run in self.runs()) and size & (size - 1):
            errors.append(f"data.image_size_px: the GAN runs need a power of two (8, 16, 32, ... 256), got {size}")
        if not self.runs():
            errors.append("scenarios: no scenario has runs; give e.g. scenarios.label.runs: [diffusion-finetune]")
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


SCENARIOS = ("label", "image")
TASKS_KEY = {"label": "data.tasks", "image": "image_data.tasks"}


def chain_for(num_tasks: int) -> list[dict[str, int]]:
    return [{"task": k, "prev": k - 1} for k in range(1, num_tasks + 1)]


def _format(err: ValidationError, source: str) -> str:
    lines = [f"{source} is invalid:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if not path:  # a cross-field check: its message starts with the key it is about
            path, _, msg = msg.partition(": ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (typo?); see params.yaml in the repository for the allowed keys"
        lines.append(f"  {path}: {msg}")
    return "\n".join(lines)


def parse_params(raw: dict, source: str = "params.yaml") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format(err, source)) from None


def load_params(path: str | Path | None = None) -> Params:
    path = Path(path) if path else repo_root() / "params.yaml"
    if not path.exists():
        raise ParamsError(f"{path} not found; run from the repository root or set DVC_ROOT")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} must be a mapping of sections (data:, train:, ...)")
    return parse_params(raw, str(path))


def repo_root() -> Path:
    """DVC exports DVC_ROOT to every stage; outside DVC the current directory is the root."""
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def with_values(params: Params, values: dict) -> Params:
    """params with searched values set, e.g. {"lifelong_gan.beta": 2.0}: what a trial trains with, and
    what the train stages train with under train.use_tuned."""
    for key, value in values.items():
        if key not in TUNABLE:
            raise ValueError(f"unknown tuned parameter {key!r}; tunable: {', '.join(TUNABLE)}")
        section, name = key.split(".")
        value = int(value) if TUNABLE[key][0] else float(value)
        params = params.model_copy(update={section: getattr(params, section).model_copy(update={name: value})})
    return params
