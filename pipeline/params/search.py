"""The search space of Ray Tune (`tune:`): which keys a search may vary, for which runs, and their checks.

Kept apart from the sections because it reasons across them: a searched value must be valid for its
own section (`lifelong_gan.beta` >= 0, ...) and used by the searched run.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError

from lifelong.catalog import CATALOG
from pipeline.params.sections import (
    DistillParams,
    GANParams,
    LifelongGANParams,
    PiggybackGANParams,
    TrainParams,
    _Section,
)


def split_run(run: str) -> tuple[str, str]:
    """ "gan-lifelong_gan" -> ("gan", "lifelong_gan")."""
    family, _, method = run.partition("-")
    return family, method


# Hyperparameters a search may vary: key path -> integer? (else float). Which runs use a key follows
# from the method catalog: a method's own section (lifelong_gan.beta: gan-lifelong_gan) or its
# family's learning rate (train.lr: every diffusion run, gan.lr: every GAN run).
TUNABLE: dict[str, bool] = {
    "distill.weight": False,  # lambda of generative replay / distillation
    "distill.replay_ddim_steps": True,  # S
    "train.lr": False,
    "gan.lr": False,
    "lifelong_gan.beta": False,  # weight of L_DL
    "piggyback_gan.filter_ratio": False,  # lambda: new free filters per task
    "piggyback.filter_ratio": False,  # idem, diffusion-piggyback
}
_FAMILY_LR = {"train.lr": "diffusion", "gan.lr": "gan"}
# The search trains a run on the label scenario and measures every seen task with the run's final
# model (piggyback_gan switched to each task's filters). A method with one model per task
# (standalone) generates its earlier tasks with other models, so a search over it would measure the wrong thing.
UNTUNABLE_RUNS = tuple(spec.run for methods in CATALOG.values() for spec in methods.values()
                       if spec.old_task_weights == "own_model")


def tune_run(method: str) -> str:
    """tune.method as a run name: "gan-lifelong_gan" stays; a bare name is the diffusion method of that
    name if there is one (so "finetune" is diffusion's), else the GAN method ("lifelong_gan")."""
    if "-" in method:
        return method
    for family in ("diffusion", "gan"):
        if method in CATALOG[family]:
            return f"{family}-{method}"
    return method


def tunable_for(run: str, key: str) -> bool:
    family, method = split_run(run)
    if key in _FAMILY_LR:
        return _FAMILY_LR[key] == family
    spec = CATALOG.get(family, {}).get(method)
    return spec is not None and spec.options == key.split(".")[0]


def runs_using(key: str) -> list[str]:
    """The runs a tunable key applies to (for error messages)."""
    return [spec.run for methods in CATALOG.values() for spec in methods.values() if tunable_for(spec.run, key)]


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
    allowed = [f"{f}-{m}" for f, methods in CATALOG.items() for m in methods
               if f"{f}-{m}" not in UNTUNABLE_RUNS]
    for method in dict.fromkeys([tune.method, *tune.space]):
        where = "tune.method" if method == tune.method else f"tune.space.{method}"
        run = tune_run(method)
        family, name = split_run(run)
        if run in UNTUNABLE_RUNS:
            errors.append(f"{where}: {method!r} trains one model per task: the search's objective (every seen "
                          "task, generated by the last model) does not apply; allowed: " + ", ".join(allowed))
        elif name not in CATALOG.get(family, {}):
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
        integer = TUNABLE[key]
        if not tunable_for(run, key):
            errors.append(f"{where}: method {method!r} does not use this parameter "
                          f"(only {', '.join(runs_using(key))} do)")
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


def with_values(params, values: dict):
    """params (a Params) with searched values set, e.g. {"lifelong_gan.beta": 2.0}: what a trial
    trains with, and what the train stages train with under train.use_tuned."""
    for key, value in values.items():
        if key not in TUNABLE:
            raise ValueError(f"unknown tuned parameter {key!r}; tunable: {', '.join(TUNABLE)}")
        section, name = key.split(".")
        value = int(value) if TUNABLE[key] else float(value)
        params = params.model_copy(update={section: getattr(params, section).model_copy(update={name: value})})
    return params
