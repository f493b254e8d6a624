r"""Multi-process training helpers over :mod:`torch.distributed` (DDP), and a local launcher.

The trainers wrap the model in :class:`~torch.nn.parallel.DistributedDataParallel` when a process group is
initialised with more than one process. Each global batch (the same rows a single process would use) is
split into contiguous shards, one per rank; the local loss is rescaled by
:math:`W n_\text{local} / n_\text{global}` so that DDP's gradient average equals the gradient of the
single-process loss on the global batch, also when the shards are unequal.
"""
from __future__ import annotations

import os
import socket
from typing import Any, Callable

import torch
import torch.distributed as dist

from .._checks import check_int


def is_distributed() -> bool:
    """True when a :mod:`torch.distributed` process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``, ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        sizes = torch.tensor([x.shape[0]], device=x.device)
        all_sizes = [torch.zeros_like(sizes) for _ in range(world)]
        dist.all_gather(all_sizes, sizes)
        counts = [int(s) for s in all_sizes]
        top = max(counts)
        padded = x.new_zeros((top, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        ctx.counts = counts
        ctx.rank = dist.get_rank()
        return torch.cat([p[:c] for p, c in zip(parts, counts)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.counts[: ctx.rank])
        return grad[start: start + ctx.counts[ctx.rank]]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    r"""Concatenate ``x`` (``n_r x ...``) from every rank along dimension 0, differentiably.

    The backward pass sums the incoming gradients over ranks (all-reduce) and returns each rank its own
    slice, i.e. rank :math:`j` receives :math:`\sum_r \partial L_r / \partial x_j`. Under DDP's gradient average
    this is exactly the gradient of :math:`\tfrac1W\sum_r L_r` — both for a loss computed on the local rows
    against all gathered rows and for a loss computed on the whole gathered batch on every rank (then it is
    the gradient of that loss). Ranks may hold different numbers of rows. Contrastive losses need it: their
    negatives are the whole global batch (CLIP, Radford et al. 2021; SupCon, Khosla et al. 2020).

    Returns ``x`` itself when no process group with more than one process is initialised.

    Example:
        >>> import torch
        >>> x = torch.ones(2, 3, requires_grad=True)
        >>> gather_with_grad(x) is x
        True
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


def shard(index: torch.Tensor | slice, rank: int, world: int) -> tuple[torch.Tensor | slice, int]:
    """The contiguous part of a global batch (index tensor or slice) that ``rank`` trains on, and its size."""
    if world == 1:
        n = index.numel() if isinstance(index, torch.Tensor) else index.stop - index.start
        return index, n
    if isinstance(index, torch.Tensor):
        part = index.tensor_split(world)[rank]
        return part, part.numel()
    n = index.stop - index.start
    bounds = [index.start + (n * r) // world for r in range(world + 1)]
    return slice(bounds[rank], bounds[rank + 1]), bounds[rank + 1] - bounds[rank]


def free_port() -> int:
    """A TCP port on localhost that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launched(rank: int, fn: Callable, world: int, port: int, backend: str, args: tuple) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    os.environ["RANK"], os.environ["WORLD_SIZE"] = str(rank), str(world)
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def launch(fn: Callable[..., Any], world_size: int, *args: Any, backend: str = "gloo") -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` new processes joined in a process group.

    A local launcher for tests and single-machine runs: picks a free port, initialises the group with
    ``init_method="env://"`` and the given backend (``"gloo"`` on CPU, ``"nccl"`` on GPUs), and destroys it
    afterwards. ``fn`` must be importable (a module-level function). Results travel through files or other
    means of ``fn``'s choosing. Raises if any process fails.
    """
    import torch.multiprocessing as mp

    if not callable(fn):
        raise TypeError(f"fn must be a callable fn(rank, world_size, *args), got {type(fn).__name__}")
    world_size = check_int(world_size, "world_size")
    if not isinstance(backend, str) or not dist.is_backend_available(backend):
        available = [b for b in ("gloo", "nccl", "mpi", "ucc") if dist.is_backend_available(b)]
        raise ValueError(f"backend {backend!r} is not available in this PyTorch; available: {', '.join(available)}")
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise ValueError(f"backend 'nccl' needs one CUDA GPU per process: {world_size} processes, "
                         f"{torch.cuda.device_count()} GPU(s)")
    mp.spawn(_launched, args=(fn, world_size, free_port(), backend, args), nprocs=world_size, join=True)
