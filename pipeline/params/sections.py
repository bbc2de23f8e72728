"""The sections of params.yaml: one pydantic model each, every field with its reason.

extra="forbid" everywhere: a typo'd key is an error naming its path, never a silently ignored setting.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CONDITIONS = ("edges", "silhouette", "downsample")  # lifelong.data.paired.CONDITIONS
DATASET_NAMES = ("fashion_mnist", "digits", "image_folder")
FEATURE_EXTRACTORS = ("lifelong-cnn", "inception-v3-compat", "auto")  # lifelong.evaluation.resolve_feature_extractor


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
    # 1: grayscale; 3: RGB (pix2pix folders read in colour; tasks derived from data.dataset, which is
    # grayscale, replicate their gray to R = G = B). The classifier stays grayscale: it judges an RGB
    # image by its luminance.
    channels: Literal[1, 3] = 1
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
    mode_seeking: float = Field(0.0, ge=0)  # lambda_ms (MSGAN) of the label generator; 0: off
    steps_per_task: int = Field(300, gt=0)  # all GAN methods get the same budget
    batch_size: int = Field(64, gt=0)
    lr: float = Field(2e-4, gt=0)  # Adam(beta1 = 0.5), BicycleGAN's default


class LifelongGANParams(_Section):
    beta: float = Field(1.0, ge=0)  # weight of the distillation loss L_DL
    auxiliary: Literal["montage", "swap", "both"] = "both"  # image-conditioned: auxiliary pairs to distil on


class PiggybackGANParams(_Section):
    filter_ratio: float = Field(0.25, gt=0, le=1)  # lambda: share of each layer's filters that are new per task
    warm_start: bool = True  # task t starts at task t-1's weights (U_t, M_t chosen to reproduce them); false: from scratch


class PiggybackParams(PiggybackGANParams):
    """diffusion-piggyback's knobs: the same filter bank on the UNet's convs."""


class ModelParams(_Section):
    block_out_channels: list[int] = [32, 64]  # UNet width per resolution level
    layers_per_block: int = Field(1, ge=1)
    attention: bool = False  # self-attention on the lowest resolution (paper: yes; CPU default: no)
    num_train_timesteps: int = Field(1000, gt=1)  # DDPM T
    # false: the generative-distillation paper's unconditional DDPM (no class embedding, replay without
    # labels; evaluation routes samples to tasks by the classifier and adds the class-balance KL)
    conditional: bool = True
    # classifier-free guidance (Ho & Salimans 2022): p_uncond and w (0, 0: plain class-conditional sampling)
    label_dropout: float = Field(0.0, ge=0, lt=1)
    guidance_scale: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _guidance_needs_null_label(self) -> "ModelParams":
        if not self.conditional and (self.label_dropout > 0 or self.guidance_scale > 0):
            raise ValueError("conditional: false has no labels to drop or guide by: set label_dropout: 0 and "
                             "guidance_scale: 0")
        if self.guidance_scale > 0 and self.label_dropout == 0:
            raise ValueError("guidance_scale > 0 needs label_dropout > 0 (e.g. 0.1): the network learns the "
                             "unconditional prediction guidance subtracts only from dropped labels")
        return self

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
    ema_decay: float = Field(0.0, ge=0, lt=1)  # diffusion: export an EMA of the weights (0: the raw weights)
    ema_warmup: bool = False  # the EMA's decay ramps up as min(ema_decay, (1 + n) / (10 + n)) over a task's steps n
    num_workers: int = Field(1, ge=1)  # Ray Train workers (DDP when >= 2)
    cpus_per_worker: int = Field(1, ge=1)  # CPUs per Ray Train worker actor; Ray sets its torch threads to this
    # How Ray places the workers (ScalingConfig.placement_strategy): PACK fills a node first, SPREAD and
    # STRICT_SPREAD (one worker per node, or the job waits) put them on different nodes.
    placement: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    use_gpu: bool = False  # CUDA + NCCL + bf16 autocast
    local_mode: Literal["auto", "always", "never"] = "auto"  # auto: Ray Train local mode for 1 CPU worker
    checkpoint_every_steps: int = Field(100, gt=0)
    log_every_steps: int = Field(50, gt=0)
    max_failures: int = Field(1, ge=0)  # Ray Train FailureConfig: worker-group restarts before giving up
    loader_workers: int = Field(0, ge=0)  # DataLoader processes per Ray worker
    use_tuned: bool = False  # tune.method's label run applies results/tune/applied/<run>.json (the `tuned` stage's pick)

    @model_validator(mode="after")
    def _batch_divides(self) -> "TrainParams":
        if self.batch_size < self.num_workers:
            raise ValueError(f"batch_size: ({self.batch_size}) must be >= num_workers ({self.num_workers})")
        return self


class DistillParams(_Section):
    weight: float = Field(1.0, ge=0)  # lambda: weight of the replay / distillation term
    replay_ddim_steps: int = Field(2, ge=1, le=1000)  # S: DDIM steps of the teacher's replay samples


class EvalParams(_Section):
    # training seeds per run: chain i (0-based) trains every task with `seed + i`; the report gives the
    # mean and a 95% confidence interval over them (t distribution). Chain 0 keeps the run's own names.
    seeds: int = Field(1, ge=1, le=20)
    samples_per_class: int = Field(100, gt=1)
    ddim_steps: int = Field(10, ge=1)
    # FID/KID features; auto: inception-v3-compat when its weights file is present, else lifelong-cnn
    # (resolved once per evaluate stage; its evaluation file and the report name the one used)
    feature_extractor: Literal["lifelong-cnn", "inception-v3-compat", "auto"] = "lifelong-cnn"
    kid_subset_size: int = Field(100, gt=1)  # clamped to the number of samples
    batch_size: int = Field(500, gt=0)  # generation batch


class ClassifierParams(_Section):
    epochs: int = Field(3, gt=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(1e-3, gt=0)


class StorageParams(_Section):
    # Where every node reads shards and writes checkpoints (lifelong/storage.py): None keeps both in the
    # repository (data/shards, runs/); an absolute path (a shared mount) or s3://bucket/prefix (endpoint
    # and keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) is what a cluster needs.
    uri: str | None = None

    @field_validator("uri")
    @classmethod
    def _absolute_or_s3(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if "://" in v and not v.startswith("s3://"):
            raise ValueError(f"must be an absolute path or s3://bucket/prefix (got {v!r})")
        if v.startswith("s3://") and len(v) <= len("s3://"):
            raise ValueError("s3:// needs a bucket: s3://bucket/prefix")
        if "://" not in v and not os.path.isabs(v):
            raise ValueError(f"must be an absolute path or s3://bucket/prefix (got {v!r}); Ray workers change directory")
        return v.rstrip("/")


class RayParams(_Section):
    # None: $RAY_ADDRESS if set (e.g. the cluster `lifelong repro` keeps up), else a local cluster.
    address: str | None = None


class MlflowParams(_Section):
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db


class ScenarioParams(_Section):
    # "<family>-<method>" pairs this scenario trains, e.g. diffusion-generative_distillation,
    # gan-lifelong_gan; [] switches the scenario off; `all`: every run that applies (the full method
    # matrix). Its tasks are data.tasks / image_data.tasks.
    runs: list[str] = []


class ScenariosParams(_Section):
    label: ScenarioParams = ScenarioParams()  # label-conditioned, class-incremental: data.tasks
    image: ScenarioParams = ScenarioParams()  # image-conditioned (A -> B): image_data.tasks
