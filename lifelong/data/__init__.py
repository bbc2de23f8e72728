"""Data for lifelong: raw datasets -> per-task WebDataset shards -> training/evaluation readers."""

from lifelong.data.loader import read_all, read_all_pairs, train_batches, train_pair_batches
from lifelong.data.paired import (
    CONDITIONS,
    FASHION_IMAGE_TASKS,
    derive_pairs,
    derive_tasks,
    load_pix2pix_folder,
)
from lifelong.data.shards import (
    ShardError,
    read_manifest,
    task_shard_files,
    task_shard_paths,
    verify_shards,
    write_dataset_shards,
    write_paired_shards,
    write_task_shards,
)
from lifelong.data.sources import DATASETS, DataSourceError, load_split, read_idx

__all__ = [
    "CONDITIONS",
    "DATASETS",
    "DataSourceError",
    "FASHION_IMAGE_TASKS",
    "ShardError",
    "derive_pairs",
    "derive_tasks",
    "load_pix2pix_folder",
    "load_split",
    "read_all",
    "read_all_pairs",
    "read_idx",
    "read_manifest",
    "task_shard_files",
    "task_shard_paths",
    "train_batches",
    "train_pair_batches",
    "verify_shards",
    "write_dataset_shards",
    "write_paired_shards",
    "write_task_shards",
]
