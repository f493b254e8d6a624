r"""Closed forms under :mod:`torch.distributed`: each process streams its own shard, the moments are summed
over the process group, every process gets the same map.

Only on request: ``group=`` (a process group) or ``distributed=True`` (the default group) in
:func:`~relaxedortho.closed_form.accumulate_moments`, :func:`~relaxedortho.closed_form.fit_closed_form` and
:func:`~relaxedortho.closed_form.lambda_init`. Never implied by an initialised process group: a closed form
called on one process only (an evaluation on rank 0, say) would otherwise wait forever for the others.

Protocol of :func:`reduce_moments` (every process of the group makes the same calls):

1. each process accumulates its shard (:func:`~relaxedortho.closed_form.accumulate_moments`; a process may
   hold no rows, and an error there is caught);
2. ``all_gather`` of 11 integers per process (failure flag, rows, widths, flags, dtypes): every process sees
   the same table, so an error on one process (NaN in its shard, different widths) is raised on every
   process instead of leaving the others waiting;
3. ``all_reduce`` of the column sums (p + q numbers): the common shift :math:`k^*`, the mean of all rows;
4. each process moves its moments to :math:`k^*` (exact algebra, :mod:`~relaxedortho.closed_form.pairwise_update`)
   and one ``all_reduce`` (sum) of the sums, :math:`X^\top Y` and the requested Grams
   (p + q + pq + p² + q² float64 numbers) gives the moments of all shards about the same shift — to float64
   rounding the moments of all rows in one pass. Without column sums on some process (``means=False``) the
   uncentred products are summed instead.

Communication per process is :math:`8(pq + p^2 + q^2 + 2p + 2q) + 88W` bytes handed to the collectives
(W processes), independent of the number of rows; a ring all-reduce moves about twice that over the wire.

The solve (:func:`solve_once`) runs on rank 0 of the group only, and rank 0 broadcasts :math:`W` (p×q) and the
bias; the other processes build their map from these bytes. So the maps are bitwise identical on every
process whatever the backend's reduction order or the processes' BLAS threads and hardware (DDP needs
identical replicas), the SVDs are not computed W times, and an error of the solver on rank 0 is sent to
every process (same exception type and message) instead of deadlocking them. The moments returned by
``accumulate_moments(..., distributed=True)`` are identical on every process when the backend's all-reduce
delivers the same result to every rank, as the ring and tree algorithms of gloo and NCCL do (the sum is
formed once and then copied; NVIDIA/nccl#855).

Backends: ``gloo`` communicates CPU tensors (moments on a GPU are copied to the CPU for the reduction and
back), ``nccl`` CUDA tensors on ``torch.cuda.current_device()`` (set it per process, e.g.
``torch.cuda.set_device(local_rank)``); other backends (``mpi``, ``"cpu:gloo,cuda:nccl"``) use the device of
the moments. NCCL reduces float64 natively (``ncclFloat64``), so no split into float32 parts is needed. Only
gloo is exercised by the test suite (2 processes, CPU).
"""
from __future__ import annotations

import functools
import pickle
from typing import Any, Callable

import torch
import torch.distributed as dist

from .pairwise_update import reshifted, uncentred
from .solution import ClosedFormSolution
from .streaming import PairedMoments

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_META = 11  # failed, n, p, q, has_sums, gram x, gram y, dtype, gemm dtype, chunks, scaled chunks


def check_process_group(group: Any) -> None:
    """Raise ``ValueError`` unless :mod:`torch.distributed` is initialised (the default group, or ``group``)."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("group=/distributed=True need an initialised torch.distributed process group "
                         "(torch.distributed.init_process_group); call without them for a single-process fit")
    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group must be a torch.distributed ProcessGroup, got {type(group).__name__}")


def communication_device(group: Any, device: torch.device) -> torch.device:
    """Where the tensors of the collectives live: the CPU for gloo, the current CUDA device for NCCL,
    ``device`` (the moments' device) for other backends."""
    backend = str(dist.get_backend(group)).lower()
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    if backend == "gloo":
        return torch.device("cpu")
    return device


def _first_rank(group: Any) -> int:
    """The global rank of the group's rank 0 (what ``src=`` of a broadcast wants)."""
    return 0 if group is None else dist.get_global_rank(group, 0)


def reduce_moments(local: PairedMoments | None, *, need: Any = (), widths: tuple | None = None,
                   device: Any = None, group: Any = None, error: BaseException | None = None) -> PairedMoments:
    r"""The moments of all shards of the process group, on every process (the protocol of the module
    documentation). Called by :func:`~relaxedortho.closed_form.accumulate_moments` with ``group=`` or
    ``distributed=True``; every process of the group must call it.

    Args:
        local: this process's moments, or ``None`` when it holds no rows (or failed).
        need: the Grams this process asked for (``"x"``, ``"y"``); used when it holds no rows.
        widths: ``(p, q)`` when known without rows (empty arrays), else ``None``.
        device: where an empty shard's result goes (default: the CPU).
        group: the process group (``None``: the default group).
        error: the exception this process's accumulation raised; re-raised here once every process knows.

    Raises the local error on the process that had it and a ``RuntimeError`` naming that rank on the others;
    ``ValueError`` on every process when the shards disagree on the widths or hold no rows at all.
    """
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    dev = local.device if local is not None else torch.device("cpu" if device is None else device)
    comm = communication_device(group, dev)
    mine = _meta_row(local, need, widths, error)
    table = [torch.zeros(_META, dtype=torch.int64, device=comm) for _ in range(world)]
    dist.all_gather(table, torch.tensor(mine, dtype=torch.int64, device=comm), group=group)
    rows = [t.tolist() for t in table]
    failed = [r for r, row in enumerate(rows) if row[0]]
    if failed:
        if error is not None:
            raise error
        raise RuntimeError(f"accumulating the moments failed on rank(s) {failed} of the process group (see the "
                           f"error raised there); rank {rank} stops too")
    full = [row for row in rows if row[1] > 0]
    n = sum(row[1] for row in full)
    if n == 0:
        raise ValueError("no rows on any process: X and Y must contain at least one paired row in some shard")
    p, q = full[0][2], full[0][3]
    for r, row in enumerate(rows):
        if row[2] >= 0 and (row[2], row[3]) != (p, q):
            raise ValueError(f"the shards disagree on the widths: rank {rows.index(full[0])} has X: {p}, Y: {q} "
                             f"columns, rank {r} has X: {row[2]}, Y: {row[3]}; every shard needs the same widths")
    has_sums = all(row[4] for row in full)
    grams = (all(row[5] for row in rows), all(row[6] for row in rows))
    dtype = functools.reduce(torch.promote_types, [_DTYPES[row[7]] for row in full])
    gemm = [_DTYPES[row[8]] for row in full]
    gemm_dtype = min(gemm, key=lambda d: -torch.finfo(d).eps)  # the least precise
    f64 = dict(dtype=torch.float64, device=comm)

    if has_sums:
        totals = torch.zeros(p + q, **f64)
        if local is not None:
            totals = torch.cat([local.n * local.shift_x + local.sum_x, local.n * local.shift_y + local.sum_y]).to(comm)
        dist.all_reduce(totals, group=group)
        shift = totals / n
        kx, ky = shift[:p].to(dev), shift[p:].to(dev)
        parts = reshifted(local, kx, ky) if local is not None else {}
        names = ["sum_x", "sum_y", "cross_shifted"]
    else:
        kx, ky = torch.zeros(p, dtype=torch.float64, device=dev), torch.zeros(q, dtype=torch.float64, device=dev)
        parts = uncentred(local) if local is not None else {}
        names = ["cross_shifted"]
    names += [g for g, keep in zip(("gram_x_shifted", "gram_y_shifted"), grams) if keep]
    shapes = {"sum_x": (p,), "sum_y": (q,), "cross_shifted": (p, q), "gram_x_shifted": (p, p),
              "gram_y_shifted": (q, q)}
    flat = torch.cat([(parts[k].to(comm) if k in parts else torch.zeros(shapes[k], **f64)).reshape(-1)
                      for k in names])
    dist.all_reduce(flat, group=group)
    out, start = {}, 0
    for k in names:
        size = int(torch.Size(shapes[k]).numel())
        out[k] = flat[start:start + size].reshape(shapes[k]).to(dev)
        start += size
    zeros = torch.zeros(p + q, dtype=torch.float64, device=dev)
    info = {"chunks": sum(row[9] for row in rows), "scaled_chunks": sum(row[10] for row in rows),
            "gemm_dtype": gemm_dtype, "shifted": (bool(kx.any()), bool(ky.any())), "parts": len(full),
            "processes": world}
    return PairedMoments(n=n, shift_x=kx, shift_y=ky, sum_x=out.get("sum_x", zeros[:p]),
                         sum_y=out.get("sum_y", zeros[p:]), cross_shifted=out["cross_shifted"],
                         gram_x_shifted=out.get("gram_x_shifted"), gram_y_shifted=out.get("gram_y_shifted"),
                         dtype=dtype, info=info, has_sums=has_sums)


def _meta_row(local: PairedMoments | None, need: Any, widths: tuple | None, error: BaseException | None) -> list:
    if error is not None:
        return [1] + [0] * (_META - 1)
    if local is None:
        p, q = widths if widths is not None else (-1, -1)
        return [0, 0, p, q, 1, int("x" in need), int("y" in need), 0, 0, 0, 0]
    gemm = local.info.get("gemm_dtype") or torch.float64
    return [0, int(local.n), local.in_features, local.out_features, int(local.has_sums),
            int(local.gram_x_shifted is not None), int(local.gram_y_shifted is not None),
            _DTYPES.index(local.dtype), _DTYPES.index(gemm), int(local.info.get("chunks", 0)),
            int(local.info.get("scaled_chunks", 0))]


def solve_once(solve: Callable[[], ClosedFormSolution], *, device: Any = None, group: Any = None,
               distributed: bool = False) -> ClosedFormSolution:
    """``solve()`` on rank 0 of the group, its ``W`` and bias broadcast to every process (module documentation);
    plain ``solve()`` without ``group``/``distributed``. Every process of the group must call it with the same
    (already reduced) moments; ``device`` is where the other processes put the solution.

    An exception raised by ``solve()`` on rank 0 is raised on every process: the same exception on rank 0,
    a copy (same type and message) elsewhere, or a ``RuntimeError`` with its message when it cannot be copied.
    """
    if group is None and not distributed:
        return solve()
    check_process_group(group)
    rank, src = dist.get_rank(group), _first_rank(group)
    dev = torch.device("cpu" if device is None else device)
    comm = communication_device(group, dev)
    sol, err = None, None
    if rank == 0:
        try:
            sol = solve()
        except Exception as exc:  # noqa: BLE001 - sent to every process, then raised everywhere
            err = exc
    head = torch.zeros(6, dtype=torch.int64, device=comm)
    if rank == 0:
        if err is None:
            head = torch.tensor([1, int(sol.orthogonal), int(sol.group == "SO"), int(sol.bias is not None),
                                 sol.W.shape[0], sol.W.shape[1]], dtype=torch.int64, device=comm)
    dist.broadcast(head, src=src, group=group)
    ok, orthogonal, so, has_bias, p, q = head.tolist()
    if not ok:
        box = [_portable(err) if rank == 0 else None]
        dist.broadcast_object_list(box, src=src, group=group, device=comm)
        if rank == 0:
            raise err
        exc = box[0]
        if hasattr(exc, "add_note"):  # Python >= 3.11
            exc.add_note(f"raised by the closed-form solve on rank 0 of the process group (this is rank {rank})")
        raise exc
    W = sol.W.to(comm, torch.float64).contiguous() if rank == 0 else torch.empty(p, q, dtype=torch.float64, device=comm)
    dist.broadcast(W, src=src, group=group)
    bias = None
    if has_bias:
        bias = (sol.bias.to(comm, torch.float64).contiguous() if rank == 0
                else torch.empty(q, dtype=torch.float64, device=comm))
        dist.broadcast(bias, src=src, group=group)
    if rank == 0:
        return sol
    return ClosedFormSolution(W.to(dev), None if bias is None else bias.to(dev), orthogonal=bool(orthogonal),
                              group="SO" if so else "O", info={"solved_on_rank": 0})


def _portable(err: BaseException) -> BaseException:
    """``err`` itself when it survives pickling (what broadcast_object_list does), else a RuntimeError with its
    message."""
    try:
        copy = pickle.loads(pickle.dumps(err))
        if type(copy) is type(err) and str(copy) == str(err):
            return err
    except Exception:  # noqa: BLE001 - any pickling failure means: send the message instead
        pass
    return RuntimeError(f"{type(err).__name__}: {err}")
