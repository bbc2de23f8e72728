"""One code path for rank 0 and for a single process (edm's torch_utils/distributed.py, for Ray Train).

Outside a Ray Train worker (a unit test, a notebook) every helper falls back to "rank 0 of 1" on CPU.
"""

from __future__ import annotations

import torch


def _context():
    try:
        import ray.train

        return ray.train.get_context()
    except Exception:  # not inside a Ray Train run (or Ray not importable): single process
        return None


def get_rank() -> int:
    ctx = _context()
    return ctx.get_world_rank() if ctx is not None else 0


def get_world_size() -> int:
    ctx = _context()
    return ctx.get_world_size() if ctx is not None else 1


def get_local_rank() -> int:
    """This worker's rank among the workers of its node (one download per node, e.g.)."""
    ctx = _context()
    return ctx.get_local_rank() if ctx is not None else 0


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()


def get_device() -> torch.device:
    try:
        import ray.train.torch

        return ray.train.torch.get_device()
    except Exception:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Inside a Ray Train run, Ray's prepare_model (to its device; DDP when world_size > 1);
    outside one (a unit test), the model on `device`, unwrapped."""
    if _context() is None:
        return model.to(device)
    import ray.train.torch

    return ray.train.torch.prepare_model(model)


def print0(*args, **kwargs) -> None:
    if get_rank() == 0:
        print(*args, flush=True, **kwargs)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """prepare_model wraps in DDP only when world_size > 1; code that saves weights needs the bare module."""
    return getattr(model, "module", model)
