"""Data for lifelong: raw datasets -> per-task WebDataset shards -> training/evaluation readers."""

from lifelong.data.loader import read_all, train_batches
from lifelong.data.shards import (
    ShardError,
    read_manifest,
    task_shard_paths,
    verify_shards,
    write_dataset_shards,
    write_task_shards,
)
from lifelong.data.sources import DATASETS, DataSourceError, load_split, read_idx

__all__ = [
    "DATASETS",
    "DataSourceError",
    "ShardError",
    "load_split",
    "read_all",
    "read_idx",
    "read_manifest",
    "task_shard_paths",
    "train_batches",
    "verify_shards",
    "write_dataset_shards",
    "write_task_shards",
]
