"""What each continual-learning method is, without importing torch: the catalog the pipeline reads.

`lifelong.methods.METHODS` maps the same (family, name) keys to the classes that train; this file
says what the rest of the system needs to know about each method (which params.yaml section holds
its own knobs, which data it trains on, which weights generate an old task), so that validating
params.yaml or planning DVC stages never imports torch and never compares method names as strings.
A test checks that the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodSpec:
    family: str  # "diffusion" (class-conditional DDPM) or "gan" (DCGAN / BicycleGAN)
    name: str
    # The params.yaml section that holds this method's own knobs, passed to the method by their
    # params.yaml names (lifelong_gan.beta -> LifelongGAN(beta=...)); None: the method has none.
    options: str | None = None
    trains_on_seen_tasks: bool = False  # True: task k trains on the data of tasks 1..k (joint)
    # Which weights generate an old task j after task k: the task-k model (default), task j's own
    # model ("own_model", standalone) or the task-k model switched to task j's filters
    # ("task_filters", piggyback_gan).
    old_task_weights: str = "final_model"

    @property
    def run(self) -> str:
        """The run name of this method in params.yaml: "<family>-<name>"."""
        return f"{self.family}-{self.name}"


CATALOG: dict[str, dict[str, MethodSpec]] = {
    "diffusion": {
        "finetune": MethodSpec("diffusion", "finetune"),
        "joint": MethodSpec("diffusion", "joint", trains_on_seen_tasks=True),
        "generative_replay": MethodSpec("diffusion", "generative_replay", options="distill"),
        "generative_distillation": MethodSpec("diffusion", "generative_distillation", options="distill"),
        "intermediate_distillation": MethodSpec("diffusion", "intermediate_distillation", options="distill"),
        "piggyback": MethodSpec("diffusion", "piggyback", options="piggyback", old_task_weights="task_filters"),
    },
    "gan": {
        "finetune": MethodSpec("gan", "finetune"),
        "joint": MethodSpec("gan", "joint", trains_on_seen_tasks=True),
        "standalone": MethodSpec("gan", "standalone", old_task_weights="own_model"),
        "lifelong_gan": MethodSpec("gan", "lifelong_gan", options="lifelong_gan"),
        "piggyback_gan": MethodSpec("gan", "piggyback_gan", options="piggyback_gan", old_task_weights="task_filters"),
    },
}


def method_spec(family: str, name: str) -> MethodSpec:
    """The catalog entry of a method; one error listing the valid names on a typo."""
    if family not in CATALOG:
        raise ValueError(f"unknown model family {family!r}; valid: {', '.join(CATALOG)}")
    try:
        return CATALOG[family][name]
    except KeyError:
        raise ValueError(f"unknown {family} method {name!r}; valid names: {', '.join(CATALOG[family])}") from None


def run_spec(run: str) -> MethodSpec:
    """ "gan-lifelong_gan" -> its MethodSpec."""
    family, _, name = run.partition("-")
    return method_spec(family, name)
