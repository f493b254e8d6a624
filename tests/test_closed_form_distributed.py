"""Closed forms under torch.distributed: shards on several processes give the single-process fit, the same map
on every process; errors reach every process instead of leaving them waiting."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist

from relaxedortho.closed_form import KINDS, PairedMoments, accumulate_moments, fit_closed_form, lambda_init
from relaxedortho.training import launch
from relaxedortho.training.distributed import free_port

#: The relaxed solvers stop on a relative KKT residual (default 1e-6, where two sums of the same shards that
#: differ by 1e-13 give maps 1e-4 apart); at TIGHT they land within 5e-10 of each other (compared at 1e-8).
TIGHT = 1e-12
RELAXED = ("relaxed_penalty", "relaxed_frobenius", "relaxed_band", "relaxed_frobenius_pg")
OPTS = {"anchored": {"prior": np.eye(5), "gamma": 2.0}, "relaxed_penalty": {"mu": 1.0, "tol": TIGHT},
        "relaxed_frobenius": {"radius": 0.5, "tol": TIGHT}, "relaxed_band": {"lower": 0.9, "upper": 1.1, "tol": TIGHT}}
RECTANGULAR = {"orthogonal": {}, "orthogonal_lsq": {}, "affine": {}, "ridge": {}, "cca": {"shrinkage": 0.3},
               "relaxed_frobenius": {"radius": 0.5, "center": True, "tol": TIGHT}}
#: Fits whose solver stops on a step-size test before converging to rounding level: the projected gradient of
#: the centred relaxed_frobenius (also behind lambda_init) took 222 or 368 steps for two sums of the same
#: shards that differ by 1e-13 (relative) and landed 3e-8 apart. Every other fit is compared to float64
#: rounding (1e-10; measured 1e-13 at most).
SOLVER_LIMITED = ("rect_relaxed_frobenius", "lambda_init")
N, SPLIT = 90, 37  # rank 0 holds rows [0, 37), rank 1 rows [37, 90)


def _data(p=5, q=5, seed=0):
    """Offset-heavy, anisotropic rows (each shard's shift differs) and a planted map with det -1 plus noise."""
    rng = np.random.default_rng(seed)
    X = 20.0 + rng.standard_normal((N, p)) * np.geomspace(2.0, 0.2, p)
    W = np.linalg.qr(rng.standard_normal((max(p, q), max(p, q))))[0][:p, :q]
    W[:, 0] *= -1
    return X, X @ W - 7.0 + 0.1 * rng.standard_normal((N, q))


def _chunks(X, Y, size):
    return [(X[i:i + size], Y[i:i + size]) for i in range(0, len(X), size)]


def _shard(rank, X, Y):
    """This rank's rows as a stream of chunks of a rank-specific size."""
    rows = slice(0, SPLIT) if rank == 0 else slice(SPLIT, N)
    return _chunks(X[rows], Y[rows], 8 if rank == 0 else 13)


def _plain(module):
    return {"weight": module.weight.detach().as_subclass(torch.Tensor).clone(),
            "bias": (module.bias.detach().as_subclass(torch.Tensor).clone() if module.bias is not None
                     else torch.zeros(0))}


def _caught(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the test compares what each rank raised
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def _worker(rank, world, path):
    torch.set_num_threads(1)
    X, Y = _data()
    out = {}
    for kind in KINDS:
        out[kind] = _plain(fit_closed_form(_shard(rank, X, Y), kind=kind, distributed=True, **OPTS.get(kind, {})))
    out["relaxed_frobenius_pg"] = _plain(fit_closed_form(_shard(rank, X, Y), kind="relaxed_frobenius", radius=0.5,
                                                         solver="projected_gradient", tol=TIGHT, distributed=True))
    Xr, Yr = _data(6, 4, seed=1)
    for kind, opts in RECTANGULAR.items():
        out["rect_" + kind] = _plain(fit_closed_form(_shard(rank, Xr, Yr), kind=kind, distributed=True, **opts))
    group = dist.new_group([0, 1])
    out["affine_group"] = _plain(fit_closed_form(_shard(rank, X, Y), kind="affine", group=group))
    out["lambda_init"] = _plain(lambda_init(_shard(rank, X, Y), lam=0.7, distributed=True, tol=TIGHT))
    # float32 shards at 1e30 (the scaled accumulation path on every rank)
    x32, y32 = (X * 1e30).astype(np.float32), (Y * 1e30).astype(np.float32)
    out["float32_huge"] = _plain(fit_closed_form(_shard(rank, x32, y32), kind="centered", distributed=True))
    # rank 1 holds no rows
    out["empty_rank"] = _plain(fit_closed_form(_chunks(X[:SPLIT], Y[:SPLIT], 8) if rank == 0 else [],
                                               kind="orthogonal", distributed=True))
    # means=False: rank 0's shard needs no shift (no sums), rank 1's is offset-heavy (sums kept)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    mixed = _shard(0, Xc, Yc) if rank == 0 else _shard(1, X, Y)
    local = accumulate_moments(mixed, second_moments=(), means=False)
    out["mixed_has_sums"] = {"value": torch.tensor(local.has_sums)}
    out["mixed"] = _plain(fit_closed_form(local, kind="orthogonal", distributed=True))
    m = accumulate_moments(_shard(rank, X, Y), second_moments=("x", "y"), distributed=True)
    m.save(os.path.join(path, f"moments{rank}.pt"))
    # errors: every rank raises, none waits
    bad_x = X.copy()
    bad_x[SPLIT + 3, 2] = np.nan
    errors = {"nan": _caught(lambda: fit_closed_form(_shard(rank, bad_x, Y), kind="affine", distributed=True)),
              "widths": _caught(lambda: fit_closed_form(_shard(rank, X if rank == 0 else X[:, :4], Y),
                                                        distributed=True)),
              "solver": _caught(lambda: fit_closed_form(_chunks(X[:1], Y[:1], 8) if rank == 0 else [],
                                                        kind="affine", distributed=True)),
              "no_rows": _caught(lambda: accumulate_moments([], distributed=True))}
    # still in step after the errors
    out["after_errors"] = _plain(fit_closed_form(_shard(rank, X, Y), kind="orthogonal", distributed=True))
    torch.save({"fits": out, "errors": errors}, os.path.join(path, f"rank{rank}.pt"))


def _single_process():
    X, Y = _data()
    ref = {kind: _plain(fit_closed_form(X, Y, kind=kind, **OPTS.get(kind, {}))) for kind in KINDS}
    ref["relaxed_frobenius_pg"] = _plain(fit_closed_form(X, Y, kind="relaxed_frobenius", radius=0.5,
                                                         solver="projected_gradient", tol=TIGHT))
    Xr, Yr = _data(6, 4, seed=1)
    for kind, opts in RECTANGULAR.items():
        ref["rect_" + kind] = _plain(fit_closed_form(Xr, Yr, kind=kind, **opts))
    ref["affine_group"] = ref["affine"]
    ref["lambda_init"] = _plain(lambda_init(X, Y, lam=0.7, tol=TIGHT))
    ref["float32_huge"] = _plain(fit_closed_form((X * 1e30).astype(np.float32).astype(np.float64),
                                                 (Y * 1e30).astype(np.float32).astype(np.float64), kind="centered"))
    ref["empty_rank"] = _plain(fit_closed_form(X[:SPLIT], Y[:SPLIT]))
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    ref["mixed"] = _plain(fit_closed_form(np.vstack([Xc[:SPLIT], X[SPLIT:]]), np.vstack([Yc[:SPLIT], Y[SPLIT:]])))
    ref["after_errors"] = ref["orthogonal"]
    return ref


@pytest.mark.slow
def test_two_gloo_processes_fit_what_one_process_fits(tmp_path):
    launch(_worker, 2, str(tmp_path), backend="gloo")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    ref = _single_process()
    for name, expected in ref.items():
        for key in ("weight", "bias"):
            got0, got1 = ranks[0]["fits"][name][key], ranks[1]["fits"][name][key]
            assert torch.equal(got0, got1), f"{name}.{key} differs between the ranks"  # bitwise, for DDP
            scale = (float(expected[key].abs().max()) if expected[key].numel() else 0.0) + 1.0
            if name == "float32_huge":
                torch.testing.assert_close(got0.double(), expected[key], rtol=0, atol=1e-5 * scale, msg=name)
            elif name in RELAXED:
                torch.testing.assert_close(got0, expected[key], rtol=0, atol=1e-8 * scale, msg=f"{name}.{key}")
            elif name in SOLVER_LIMITED:
                torch.testing.assert_close(got0, expected[key], rtol=0, atol=1e-6 * scale, msg=f"{name}.{key}")
            else:
                assert got0.dtype == expected[key].dtype
                torch.testing.assert_close(got0, expected[key], rtol=0, atol=1e-10 * scale, msg=f"{name}.{key}")
    assert [bool(r["fits"]["mixed_has_sums"]["value"]) for r in ranks] == [False, True]
    # the reduced moments: identical on both ranks, equal to one pass over all rows
    m0, m1 = (PairedMoments.load(tmp_path / f"moments{r}.pt") for r in range(2))
    for name in ("shift_x", "shift_y", "sum_x", "sum_y", "cross_shifted", "gram_x_shifted", "gram_y_shifted"):
        assert torch.equal(getattr(m0, name), getattr(m1, name)), name
    X, Y = _data()
    whole = accumulate_moments(X, Y, second_moments=("x", "y"))
    assert m0.n == N and m0.info["processes"] == 2 and m0.info["parts"] == 2
    for fn in ("cross", "gram_x", "gram_y"):
        torch.testing.assert_close(getattr(m0, fn)(), getattr(whole, fn)(), rtol=1e-13, atol=0)
        torch.testing.assert_close(getattr(m0, fn)(center=True), getattr(whole, fn)(center=True), rtol=0,
                                   atol=1e-12 * N)
    e0, e1 = ranks[0]["errors"], ranks[1]["errors"]
    assert e1["nan"] == "ValueError: X (chunk 0) contains NaN or Inf values"
    assert e0["nan"].startswith("RuntimeError: accumulating the moments failed on rank(s) [1]")
    for e in (e0, e1):
        assert e["widths"].startswith("ValueError: the shards disagree on the widths: rank 0 has X: 5, Y: 5 "
                                      "columns, rank 1 has X: 4, Y: 5")
        assert e["solver"] == ("ValueError: kind='affine' centres the data and needs at least 2 rows in X and Y, "
                               "got 1")
        assert e["no_rows"].startswith("ValueError: no rows on any process")


# ---- one process (a process group of size 1, in this process): the protocol without spawning ----

@pytest.fixture
def world_of_one():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_group_of_one_gives_the_local_fit(world_of_one):
    X, Y = _data()
    for kind in ("orthogonal", "affine", "cca", "relaxed_band"):
        a = fit_closed_form(X, Y, kind=kind, distributed=True, **OPTS.get(kind, {}))
        b = fit_closed_form(X, Y, kind=kind, group=dist.group.WORLD, **OPTS.get(kind, {}))
        c = fit_closed_form(X, Y, kind=kind, **OPTS.get(kind, {}))
        for m in (a, b):
            torch.testing.assert_close(m.weight, c.weight, rtol=0, atol=1e-8 if kind in RELAXED else 1e-10)
    local = accumulate_moments(X, Y, second_moments=("x",))
    reduced = accumulate_moments(local, distributed=True)  # moments given as this process's shard
    torch.testing.assert_close(reduced.cross(center=True), local.cross(center=True), rtol=0, atol=1e-11)
    assert reduced.info["processes"] == 1
    torch.testing.assert_close(lambda_init(X, Y, lam=0.3, distributed=True, tol=TIGHT).weight,
                               lambda_init(X, Y, lam=0.3, tol=TIGHT).weight, rtol=0, atol=1e-12)


def test_group_of_one_raises_the_errors_of_the_shard_and_of_the_solver(world_of_one):
    X, Y = _data()
    bad = X.copy()
    bad[4, 1] = np.inf
    with pytest.raises(ValueError, match="X contains NaN or Inf"):
        fit_closed_form(bad, Y, kind="affine", distributed=True)
    with pytest.raises(ValueError, match="needs at least 2 rows"):
        fit_closed_form(X[:1], Y[:1], kind="affine", distributed=True)
    with pytest.raises(ValueError, match="no rows on any process"):
        accumulate_moments(X[:0], Y[:0], distributed=True)
    with pytest.raises(ValueError, match="second_moments must contain only"):
        accumulate_moments(X, Y, second_moments=("z",), distributed=True)
    torch.testing.assert_close(fit_closed_form(X, Y, distributed=True).weight, fit_closed_form(X, Y).weight)


def test_distributed_needs_an_explicit_request_and_a_process_group():
    X, Y = _data()
    assert not dist.is_initialized()
    with pytest.raises(ValueError, match="need an initialised torch.distributed process group"):
        fit_closed_form(X, Y, distributed=True)
    with pytest.raises(ValueError, match="need an initialised torch.distributed process group"):
        lambda_init(X, Y, distributed=True)
    with pytest.raises(TypeError, match="distributed must be True or False"):
        accumulate_moments(X, Y, distributed="yes")


def test_group_must_be_a_process_group(world_of_one):
    X, Y = _data()
    with pytest.raises(TypeError, match="group must be a torch.distributed ProcessGroup, got str"):
        fit_closed_form(X, Y, group="world")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_moments_reduce_through_gloo(world_of_one):
    X, Y = _data()
    Xg, Yg = torch.from_numpy(X).cuda(), torch.from_numpy(Y).cuda()
    m = fit_closed_form(Xg, Yg, kind="affine", distributed=True)
    assert m.weight.device.type == "cuda"
    torch.testing.assert_close(m.weight.cpu(), fit_closed_form(X, Y, kind="affine").weight, rtol=0, atol=1e-10)
