"""The storage root of a cluster (lifelong/storage.py): content-addressed shards verified on read, and
Ray Train checkpoints on it that resume a failed worker group and hand the final model back.

Real components: a real SeaweedFS S3 server on 127.0.0.1 (the team stack's, `weed` from this venv),
real WebDataset shards, a real local Ray cluster with 2 DDP workers (gloo)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from lifelong.data import task_shard_files, write_dataset_shards
from lifelong.storage import StorageError, local_file, local_shards, publish_shards

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(48, 8, 8), dtype=np.uint8)
    labels = np.repeat(np.arange(4), 12)
    out = tmp_path_factory.mktemp("shards")
    write_dataset_shards(out, splits={"train": (images, labels), "test": (images[::4], labels[::4])},
                         tasks=[[0, 1], [2, 3]], samples_per_shard=10)
    return out


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A SeaweedFS S3 endpoint with generated keys, as the team stack runs it; the AWS_* variables
    every client (pyarrow, Ray Train, boto3) reads are set for the module and restored after it."""
    from pipeline.services import stack

    sdir = tmp_path_factory.mktemp("stack")
    cfg = stack.new_config(bucket="lifelong-test")
    server = stack.SeaweedFS(sdir, cfg)
    server.start(timeout=90)
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ENDPOINT_URL=cfg["s3"]["endpoint_url"], AWS_ACCESS_KEY_ID=cfg["s3"]["access_key"],
                      AWS_SECRET_ACCESS_KEY=cfg["s3"]["secret_key"])
    try:
        yield cfg, stack._s3_client(cfg)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        server.stop()


def test_shards_are_published_once_by_content_and_checked_when_read(shard_dir, tmp_path):
    files = task_shard_files(shard_dir, 1, "train")
    root = str(tmp_path / "store")
    urls = publish_shards(files, root)
    assert [Path(u).name for u in urls] == [f"{sha}.tar" for _, sha in files]
    stamps = [os.stat(u).st_mtime_ns for u in urls]
    assert publish_shards(files, root) == urls  # again: nothing rewritten
    assert [os.stat(u).st_mtime_ns for u in urls] == stamps
    assert sorted(os.listdir(Path(root) / "shards")) == sorted(Path(u).name for u in urls)  # no temporary left
    assert local_shards(urls) == urls  # a shared mount is read in place

    with open(urls[0], "r+b") as f:  # one flipped byte in the store
        f.seek(600)
        b = f.read(1)
        f.seek(600)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(StorageError, match=f"shard {urls[0]} is corrupt"):
        local_shards([urls[0]])


def test_s3_shards_are_fetched_verified_and_cached_per_node(shard_dir, s3, tmp_path):
    cfg, client = s3
    root = f"s3://{cfg['s3']['bucket']}/lifelong"
    files = task_shard_files(shard_dir, 2, "train")
    urls = publish_shards(files, root)
    assert urls[0] == f"{root}/shards/{files[0][1]}.tar"
    cache = tmp_path / "cache"
    got = local_shards(urls, cache_dir=str(cache))
    assert [Path(g).read_bytes() for g in got] == [Path(p).read_bytes() for p, _ in files]

    # A corrupted object: the reader refuses it, names it, and leaves nothing in its cache.
    key = f"lifelong/shards/{files[1][1]}.tar"
    client.put_object(Bucket=cfg["s3"]["bucket"], Key=key, Body=b"not a shard")
    other = tmp_path / "other-node-cache"
    with pytest.raises(StorageError, match=f"shard {urls[1]} is corrupt"):
        local_shards(urls, cache_dir=str(other))
    assert not [p for p in other.rglob("*") if p.is_file() and p.name != f"{files[0][1]}.tar"]
    with pytest.raises(StorageError, match="was it published"):
        local_shards([f"{root}/shards/{'0' * 64}.tar"], cache_dir=str(other))

    client.put_object(Bucket=cfg["s3"]["bucket"], Key="lifelong/x/final.pt", Body=b"weights")
    assert Path(local_file(f"{root}/x/final.pt", cache_dir=str(cache))).read_bytes() == b"weights"
    with pytest.raises(StorageError, match=f"{root}/x/missing.pt cannot be read"):
        local_file(f"{root}/x/missing.pt", cache_dir=str(cache))
    assert not list(cache.rglob("*.part"))


def _flaky_loop(config):
    """The library's loop; rank 0 fails once at step 6, after the checkpoint of step 4."""
    from lifelong.training import train_loop_per_worker

    marker = Path(config["extra"]["marker"])

    def on_log(metrics):
        if metrics["step"] == 6 and not marker.exists():
            marker.touch()
            raise RuntimeError("injected worker failure")

    train_loop_per_worker(config, on_log=on_log)


def test_ray_checkpoints_on_s3_resume_a_failed_worker_group_and_hand_back_the_model(shard_dir, s3, tmp_path):
    """2 DDP workers read S3 shards, checkpoint to S3, lose the group at step 6 (max_failures=1), resume
    at step 4 from `get_checkpoint()`, and hand the final model back through the last checkpoint;
    a second fit of the same run (a rerun of the stage) trains nothing and hands back the same model.

    Slow (about 2 min): three Ray Train worker groups (the first, the restarted one, the rerun's)."""
    import ray
    import ray.cloudpickle
    import torch

    import tests.pipeline.test_storage as this
    from lifelong.models import load_model
    from lifelong.training import TaskTrainConfig
    from pipeline.params import parse_params
    from pipeline.task import final_model, fit, model_config
    from tests.integration.conftest import tiny_params

    ray.cloudpickle.register_pickle_by_value(this)
    cfg_s3, _ = s3
    root = f"s3://{cfg_s3['s3']['bucket']}/ray"
    params = parse_params(tiny_params(train={"num_workers": 2, "max_failures": 1}, storage={"uri": root}))
    shards = publish_shards(task_shard_files(shard_dir, 1, "train"), root)
    cfg = TaskTrainConfig(method="finetune", family="diffusion", model_config=model_config(params, "label", "diffusion"),
                          task_index=1, task_classes=[0, 1], previous_classes=[], shards=shards,
                          checkpoint_dir=str(tmp_path / "unused"), checkpoints="ray", steps=10, batch_size=8,
                          checkpoint_every=4, log_every=2, extra={"marker": str(tmp_path / "failed-once")}).to_dict()
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             runtime_env={"env_vars": {k: os.environ[k] for k in os.environ if k.startswith("AWS_")}})
    try:
        result = fit(cfg, params, name="task1-abc", storage_path=f"{root}/runs", loop=_flaky_loop)
        assert (tmp_path / "failed-once").exists()  # the failure happened
        with final_model(result, cfg) as (final, curve):
            model = load_model(torch.load(final, map_location="cpu", weights_only=True))
            first = {k: v.clone() for k, v in model.state_dict().items()}
        steps = [(int(m["step"]), int(m["resumed_from"])) for m in curve]
        assert steps == [(2, 0), (4, 0), (6, 4), (8, 4), (10, 4)], steps  # step 6 re-done after the resume
        assert result.checkpoint.path.startswith(f"{cfg_s3['s3']['bucket']}/ray/runs/task1-abc/")

        again = fit(cfg, params, name="task1-abc", storage_path=f"{root}/runs", loop=_flaky_loop)
        with final_model(again, cfg) as (final, curve2):
            model = load_model(torch.load(final, map_location="cpu", weights_only=True))
            assert all(torch.equal(first[k], v) for k, v in model.state_dict().items())
        assert curve2 == curve
    finally:
        ray.shutdown()
