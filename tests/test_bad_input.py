"""Bad input at every public entry point: one table, one parametrized test, and a meta-test that the table covers
every public callable of the library and every subcommand of the command line.

Each row is ``(callable, call with bad input, expected exception type, phrase of its message)``. The test
checks the type, the phrase (which names the argument or the problem) and that the message is one line: no
raw PyTorch/NumPy error, no silently wrong result. Rows whose fix belongs to another branch are marked
``xfail(strict=True, reason="pending branch <name>")``; the marks go when that branch is merged.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import math
import os
import warnings
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

import relaxedortho as ro
from relaxedortho import closed_form as cf
from relaxedortho import linalg, losses, metrics, penalties, similarity, training, transfer
from relaxedortho import riemannian as rm
from relaxedortho.cli import build_parser, main
from relaxedortho.maps.base import OrthonormalityWarning

NO_CUDA = not torch.cuda.is_available()


# ----------------------------------------------------------------------------------------------- the table
@dataclass
class Row:
    target: Any                     # the public callable (or "cli:SUBCOMMAND")
    call: Callable[[Any], Any]      # call(f) with f the namespace of prepared data and files
    exc: type
    phrase: str
    id: str
    pending: str | None = None      # the branch whose fix this row waits for
    needs_no_cuda: bool = False


ROWS: list[Row] = []


def row(target, call, exc, phrase, id, *, pending=None, cuda=False):
    """Add a row. ``cuda=True``: the bad input is a CUDA device, which is only bad without a GPU."""
    ROWS.append(Row(target, call, exc, phrase, id, pending, cuda))


class CLIFailed(Exception):
    """A subcommand exited with status 1; the message is its stderr."""


class CLIUsage(Exception):
    """argparse refused the command line (exit status 2); the message is argparse's error line."""


def cli(*argv) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main([str(a) for a in argv])
        except SystemExit as exc:
            if exc.code == 0:
                return
            raise CLIUsage(err.getvalue().strip().splitlines()[-1]) from None
    if status != 0:
        assert status == 1, status
        raise CLIFailed(err.getvalue().strip())


# ----------------------------------------------------------------------------------------------- data
def _randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


X = _randn(32, 4)
Y = _randn(32, 4, seed=1)
Y3 = _randn(32, 3, seed=2)
X_NAN = X.clone()
X_NAN[3, 1] = math.nan
X_INF = X.clone()
X_INF[0, 0] = math.inf
X_INT = torch.arange(128).reshape(32, 4)
X_CPLX = X.to(torch.complex64)
X_1D = X[:, 0]
X_EMPTY = X[:0]
LABELS = torch.arange(32) % 4
W44 = _randn(4, 4, seed=3)
Q44 = torch.linalg.qr(W44.double())[0].float()


def _moments(**kw):
    return cf.accumulate_moments(X.double(), Y.double(), second_moments=("x", "y"), **kw)


def _module_pair():
    return ro.AffineMap(4, 4), ro.AffineMap(4, 4)


class _TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(4, 4)
        self.l2 = nn.Linear(4, 3)

    def forward(self, x):
        return self.l2(torch.relu(self.l1(x)))


def _transferred():
    torch.manual_seed(0)
    src, tgt = _TwoLayer(), _TwoLayer()
    tau = transfer.task_vector(_TwoLayer().state_dict(), src.state_dict())
    u = ro.OrthogonalLinear(4, 4, init="identity")
    return transfer.transfer_task_vector(tgt, tau, {"l1": (None, u), "l2": (u, None)})


def _overflowing():
    """A model whose logits overflow float32 on inputs of size 1e10 (weights of size 1e30)."""
    m = _TwoLayer()
    with torch.no_grad():
        m.l1.weight.mul_(1e30)
    return m


@pytest.fixture(scope="module")
def f(tmp_path_factory):
    """Files for the file-based rows: features, labels, saved maps, damaged files."""
    d = tmp_path_factory.mktemp("bad_input")
    rng = np.random.default_rng(0)
    new = rng.normal(size=(64, 4)).astype(np.float32)
    old = (new @ np.linalg.qr(rng.normal(size=(4, 4)))[0]).astype(np.float32)
    np.save(d / "new.npy", new)
    np.save(d / "old.npy", old)
    np.save(d / "new30.npy", new * 1e30)
    np.save(d / "old30.npy", old * 1e30)
    np.save(d / "short.npy", new[:-1])
    np.save(d / "narrow.npy", new[:, :3])
    np.save(d / "ints.npy", np.arange(256).reshape(64, 4))
    np.savetxt(d / "labels.txt", np.arange(64) % 4, fmt="%d")
    (d / "two_columns.csv").write_text("".join(f"{i % 4},3\n" for i in range(64)))
    (d / "words.txt").write_text("cat\n" * 64)
    (d / "empty.pt").write_bytes(b"")
    (d / "a_file").write_text("")
    ro.save(ro.OrthogonalLinear(4, 4), d / "map.pt")
    raw = (d / "map.pt").read_bytes()
    (d / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    corrupted = bytearray(raw)
    start = raw.index(b"relaxedortho-map")
    corrupted[start:start + 4] = b"\xff\xfe\xfd\xfc"
    (d / "corrupted.pt").write_bytes(bytes(corrupted))
    torch.save(ro.AffineMap(2, 2), d / "pickled_module.pt")
    torch.save({"x": torch.zeros(2)}, d / "dict.pt")
    payload = torch.load(d / "map.pt", weights_only=True)
    payload["state_dict"] = {k: v.clone() for k, v in payload["state_dict"].items()}
    next(iter(payload["state_dict"].values())).view(-1)[0] += 1.0  # weights changed, checksum kept
    torch.save(payload, d / "tampered.pt")
    save_checkpoint = training.save_checkpoint
    save_checkpoint({"step": 1}, d / "ckpt.pt")
    (d / "ckpt_trunc.pt").write_bytes((d / "ckpt.pt").read_bytes()[:40])
    return SimpleNamespace(d=d, p=lambda name: str(d / name))


def _q(f):  # eval's query/gallery arguments
    return ["--query", f.p("new.npy"), "--query-labels", f.p("labels.txt"), "--gallery", f.p("old.npy"),
            "--gallery-labels", f.p("labels.txt")]


# ----------------------------------------------------------------------------------------------- rows: maps
MAPS = [ro.AffineMap, ro.LambdaOrthoLinear, ro.OrthogonalLinear, ro.StiefelLinear]
for cls in MAPS:
    n = cls.__name__
    row(cls, lambda f, c=cls: c(0, 4), ValueError, "in_features", f"{n}-zero-features")
    row(cls, lambda f, c=cls: c(4.0, 4), ValueError, "in_features", f"{n}-float-features")
    row(cls, lambda f, c=cls: c(4, 4, dtype=torch.int64), TypeError, "dtype", f"{n}-int-dtype")
    row(cls, lambda f, c=cls: c(4, 4, device="gpu"), ValueError, "unknown device", f"{n}-bad-device")
    row(cls, lambda f, c=cls: c(4, 4, device="cuda"), ValueError, "no CUDA GPU", f"{n}-cuda-without-gpu",
        cuda=True)
    row(cls, lambda f, c=cls: c(4, 4, init="nope"), ValueError, "init", f"{n}-unknown-init")
    row(cls, lambda f, c=cls: c.from_matrix(X_NAN[:4]), ValueError, "NaN", f"{n}.from_matrix-nan")
    row(cls, lambda f, c=cls: c(4, 4)(X[:, :3]), ValueError, "in_features", f"{n}-forward-width")
    row(cls, lambda f, c=cls: c(4, 4, dtype=torch.float64)(X), TypeError, "dtype",
        f"{n}-float64-map-in-float32-model")
row(ro.LambdaOrthoLinear, lambda f: ro.LambdaOrthoLinear(4, 4, lam=-1.0), ValueError, "lam", "lambda-negative-lam")
row(ro.LambdaOrthoLinear, lambda f: ro.LambdaOrthoLinear(4, 4, lam=math.nan), ValueError, "lam", "lambda-nan-lam")
row(ro.LambdaOrthoLinear, lambda f: ro.LambdaOrthoLinear(4, 4, alpha=0.0), ValueError, "alpha", "lambda-zero-alpha")
row(ro.LambdaOrthoLinear, lambda f: ro.LambdaOrthoLinear(4, 4, gate="relu"), ValueError, "gate", "lambda-bad-gate")
row(ro.LambdaOrthoLinear, lambda f: ro.LambdaOrthoLinear(4, 4, estimator="nope"), ValueError, "estimator",
    "lambda-bad-estimator")
row(ro.OrthogonalLinear, lambda f: ro.OrthogonalLinear(4, 4, method="qr"), ValueError, "method",
    "orthogonal-bad-method")
row(ro.OrthogonalLinear, lambda f: ro.OrthogonalLinear(4, 3, group="SO"), ValueError, "SO",
    "orthogonal-SO-rectangular")
row(ro.OrthogonalLinear, lambda f: ro.OrthogonalLinear.from_matrix(W44), ValueError, "orthonormal",
    "orthogonal.from_matrix-not-orthonormal")
row(ro.OrthogonalLinear, lambda f: ro.OrthogonalLinear.from_matrix(Q44, device="gpu"), ValueError, "device",
    "orthogonal.from_matrix-device")
row(ro.OrthogonalLinear, lambda f: _warning_as_error(lambda: ro.OrthogonalLinear.from_matrix(_one_percent_off(1024))),
    OrthonormalityWarning, "not orthonormal to rounding", "orthogonal.from_matrix-1pct-off-k1024")


def _warning_as_error(call):
    """``call()`` with warnings raised as errors: a matrix off by more than rounding but within the projection bound
    is projected with a warning (issue 11 item 3); the row checks that the warning is one clear line."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return call()


def _one_percent_off(k):
    """A k x k float32 matrix whose singular values spread over 0.99 ... 1.01: not orthonormal (issue 11)."""
    q = torch.linalg.qr(_randn(k, k, dtype=torch.float64, seed=5))[0]
    return (q * torch.linspace(0.99, 1.01, k, dtype=torch.float64)).float()

row(ro.AlignmentMap, lambda f: ro.AffineMap.from_matrix(W44, X[:, 0]), ValueError, "bias",
    "AlignmentMap.from_matrix-bias-length")
row(ro.riemannian_lr, lambda f: ro.riemannian_lr(-1e-3, 4, 4), ValueError, "lr", "riemannian_lr-negative")
row(ro.riemannian_lr, lambda f: ro.riemannian_lr(1e-3, 0, 4), ValueError, "in_features", "riemannian_lr-zero-width")

# ----------------------------------------------------------------------------------------------- rows: save/load
row(ro.save, lambda f: ro.save(nn.Conv1d(1, 1, 1), f.p("conv.pt")), TypeError, "Conv1d", "save-conv")
row(ro.save, lambda f: ro.save("model", f.p("m.pt")), TypeError, "module must be", "save-not-a-module")
row(ro.save, lambda f: ro.save(ro.AffineMap(2, 2), 3), TypeError, "str or os.PathLike", "save-path-int")
row(ro.save, lambda f: ro.save(ro.AffineMap(2, 2), f.d), IsADirectoryError, "is a folder", "save-to-folder")
row(ro.save, lambda f: ro.save(ro.AffineMap(2, 2), f.p("missing/m.pt")), FileNotFoundError, "does not exist",
    "save-missing-folder")
row(ro.save, lambda f: ro.save(_nan_map(), f.p("nan.pt")), ValueError, "NaN or Inf", "save-diverged-map")
row(ro.load, lambda f: ro.load(f.p("nope.pt")), FileNotFoundError, "not found", "load-missing")
row(ro.load, lambda f: ro.load(f.d), IsADirectoryError, "is a folder", "load-folder")
row(ro.load, lambda f: ro.load(f.p("empty.pt")), ValueError, "empty", "load-empty")
row(ro.load, lambda f: ro.load(f.p("truncated.pt")), ValueError, "truncated", "load-truncated")
row(ro.load, lambda f: ro.load(f.p("corrupted.pt")), ValueError, "corrupted", "load-corrupted")
row(ro.load, lambda f: ro.load(f.p("tampered.pt")), ValueError, "checksum", "load-data-corrupted")
row(ro.load, lambda f: ro.load(f.p("pickled_module.pt")), ValueError, "pickled Python objects",
    "load-pickled-module")
row(ro.load, lambda f: ro.load(f.p("dict.pt")), ValueError, "not a relaxedortho map", "load-other-file")
row(ro.load, lambda f: ro.load(f.p("map.pt"), map_location="cuda"), ValueError, "no CUDA GPU",
    "load-cuda-without-gpu", cuda=True)
row(ro.load, lambda f: ro.load(f.p("map.pt"), map_location="gpu"), ValueError, "unknown map_location",
    "load-bad-map-location")


def _nan_map():
    m = ro.AffineMap(2, 2)
    with torch.no_grad():
        m.weight[0, 0] = math.nan
    return m


# ----------------------------------------------------------------------------------------------- rows: closed forms
def fcf(*a, **k):
    return cf.fit_closed_form(*a, **k)


row(cf.fit_closed_form, lambda f: fcf(X, Y, kind="nope"), ValueError, "kind must be one of", "fcf-unknown-kind")
row(cf.fit_closed_form, lambda f: fcf(X_NAN, Y), ValueError, "X contains NaN", "fcf-nan")
row(cf.fit_closed_form, lambda f: fcf(X_INT, Y), TypeError, "X", "fcf-int-data")
row(cf.fit_closed_form, lambda f: fcf(X_CPLX, Y), TypeError, "X", "fcf-complex-data")
row(cf.fit_closed_form, lambda f: fcf(X[:-1], Y), ValueError, "same number of rows", "fcf-row-mismatch")
row(cf.fit_closed_form, lambda f: fcf(X_1D, Y), ValueError, "X", "fcf-1d")
row(cf.fit_closed_form, lambda f: fcf(X_EMPTY, Y[:0]), ValueError, "rows", "fcf-empty")
row(cf.fit_closed_form, lambda f: fcf("X", Y), TypeError, "X", "fcf-string-data")
row(cf.fit_closed_form, lambda f: fcf(X, Y, device="cuda"), ValueError, "no CUDA GPU", "fcf-cuda-without-gpu",
    cuda=True)
row(cf.fit_closed_form, lambda f: fcf(X, Y, device="gpu"), ValueError, "unknown device", "fcf-bad-device")
row(cf.fit_closed_form, lambda f: fcf(X, Y, kind="ridge", ridge=-1.0), ValueError, "ridge", "fcf-negative-ridge")
row(cf.fit_closed_form, lambda f: fcf(X, Y, kind="cca", shrinkage=2.0), ValueError, "shrinkage",
    "fcf-shrinkage-above-1")
row(cf.fit_closed_form, lambda f: fcf(X, Y, kind="relaxed_penalty"), TypeError, "mu", "fcf-missing-option")
row(cf.fit_closed_form, lambda f: fcf(X, Y, kind="orthogonal", mu=1.0), TypeError, "unexpected option",
    "fcf-unknown-option")
row(cf.fit_closed_form, lambda f: fcf(X, Y, kind="relaxed_band", lower=2.0, upper=1.0), ValueError, "lower <= upper",
    "fcf-band-inverted")
row(cf.fit_closed_form, lambda f: fcf(X, Y, kind="rotation")(X[:, :3]), ValueError, "in_features",
    "fcf-result-forward-width")
row(cf.solve_closed_form, lambda f: cf.solve_closed_form(_moments(), kind="nope"), ValueError, "kind",
    "solve_closed_form-unknown-kind")
row(cf.solve_closed_form, lambda f: cf.solve_closed_form("moments"), TypeError, "moments",
    "solve_closed_form-not-moments")
row(cf.ClosedFormAlignment, lambda f: cf.ClosedFormAlignment(kind="nope").fit(X, Y), ValueError, "kind",
    "estimator-unknown-kind")
row(cf.ClosedFormAlignment, lambda f: cf.ClosedFormAlignment().predict(X), Exception, "fit",
    "estimator-predict-before-fit")
row(cf.ClosedFormAlignment, lambda f: cf.ClosedFormAlignment().fit(X, Y).predict(X[:, :3]), ValueError, "features",
    "estimator-predict-width")
row(cf.accumulate_moments, lambda f: cf.accumulate_moments(X, Y, device="cuda"), ValueError, "no CUDA GPU",
    "accumulate_moments-cuda-without-gpu", cuda=True)
row(cf.accumulate_moments, lambda f: cf.accumulate_moments(X, Y, chunk_size=0), ValueError, "chunk_size",
    "accumulate_moments-zero-chunk")
row(cf.accumulate_moments, lambda f: cf.accumulate_moments(X, Y, precision="half"), ValueError, "precision",
    "accumulate_moments-bad-precision")
row(cf.accumulate_moments, lambda f: cf.accumulate_moments(X_NAN, Y), ValueError, "NaN", "accumulate_moments-nan")
row(cf.accumulate_moments, lambda f: cf.accumulate_moments(X, Y, second_moments=("z",)), ValueError,
    "second_moments", "accumulate_moments-bad-second-moments")
row(cf.lambda_init, lambda f: cf.lambda_init(X, Y, lam=-1.0), ValueError, "lam", "lambda_init-negative-lam")
row(cf.lambda_init, lambda f: cf.lambda_init(X_NAN, Y), ValueError, "NaN", "lambda_init-nan")
row(cf.lambda_init, lambda f: cf.lambda_init(X, Y, device="cuda"), ValueError, "no CUDA GPU",
    "lambda_init-cuda-without-gpu", cuda=True)
row(cf.lambda_init, lambda f: cf.lambda_init(X, Y, solver="nope"), ValueError, "solver", "lambda_init-bad-solver")
row(cf.lambda_init, lambda f: cf.lambda_init(X, Y, max_iter=0), ValueError, "max_iter", "lambda_init-zero-max-iter")
row(cf.lambda_init, lambda f: cf.lambda_init(X, Y, tol=-1.0), ValueError, "tol", "lambda_init-negative-tol")
row(cf.solve_relaxed_band, lambda f: cf.solve_relaxed_band(_moments(), upper=1.0, tol=math.nan), ValueError, "tol",
    "solve_relaxed_band-nan-tol")
row(cf.generalized_procrustes, lambda f: cf.generalized_procrustes([X]), ValueError, "views",
    "gpa-one-view")
row(cf.generalized_procrustes, lambda f: cf.generalized_procrustes([X, Y[:-1]]), ValueError, "views[1]",
    "gpa-row-mismatch")
row(cf.generalized_procrustes, lambda f: cf.generalized_procrustes([X, X_NAN]), ValueError, "NaN", "gpa-nan")
row(cf.generalized_procrustes, lambda f: cf.generalized_procrustes([X, Y], max_iter=0), ValueError, "max_iter",
    "gpa-zero-max-iter")
row(cf.band_from_epsilon, lambda f: cf.band_from_epsilon(-0.5), ValueError, "epsilon", "band_from_epsilon-negative")
row(cf.band_from_epsilon, lambda f: cf.band_from_epsilon("0.5"), TypeError, "epsilon", "band_from_epsilon-str")
row(cf.penalty_singular_values, lambda f: cf.penalty_singular_values(torch.ones(3), c=1.0, mu=-1.0), ValueError,
    "mu", "penalty_singular_values-negative-mu")
row(cf.penalty_singular_values, lambda f: cf.penalty_singular_values(torch.tensor([1.0, math.nan]), c=1.0, mu=1.0),
    ValueError, "sigma", "penalty_singular_values-nan")
row(cf.frobenius_singular_values, lambda f: cf.frobenius_singular_values(torch.ones(3), radius=-1.0), ValueError,
    "radius", "frobenius_singular_values-negative-radius")
row(cf.penalty_singular_values, lambda f: cf.penalty_singular_values(-torch.ones(3), c=1.0, mu=1.0), ValueError,
    "sigma", "penalty_singular_values-negative-sigma")
row(cf.penalty_singular_values, lambda f: cf.penalty_singular_values([1.0], c=1.0, mu=1.0), TypeError,
    "sigma", "penalty_singular_values-list")
row(cf.projected_gradient, lambda f: cf.projected_gradient(W44[:3], W44, cf.frobenius_singular_values, W44),
    ValueError, "A must be", "projected_gradient-A-shape")
row(cf.projected_gradient, lambda f: cf.projected_gradient(W44, W44, cf.frobenius_singular_values, W44[:3], mu=0.0),
    ValueError, "W0", "projected_gradient-W0-shape")
row(cf.projected_gradient, lambda f: cf.projected_gradient(W44, W44, cf.frobenius_singular_values, W44,
                                                           max_iter=0), ValueError, "max_iter",
    "projected_gradient-zero-max-iter")
row(cf.polar_factor, lambda f: cf.polar_factor(X_NAN[:4]), ValueError, "NaN", "polar_factor-nan")
row(cf.polar_factor, lambda f: cf.polar_factor(X_1D), ValueError, "2-D", "polar_factor-1d")
row(cf.rotation_factor, lambda f: cf.rotation_factor(W44[:3]), ValueError, "square", "rotation_factor-rectangular")
row(cf.rotation_factor, lambda f: cf.rotation_factor(X_NAN[:4]), ValueError, "NaN", "rotation_factor-nan")
for solver, kw in ((cf.solve_orthogonal, {}), (cf.solve_rotation, {}), (cf.solve_orthogonal_lsq, {}),
                   (cf.solve_centered, {}), (cf.solve_similarity, {}),
                   (cf.solve_anchored, {"prior": W44, "gamma": 1.0}),
                   (cf.solve_affine, {}), (cf.solve_cca, {}), (cf.solve_relaxed_penalty, {"mu": 1.0}),
                   (cf.solve_relaxed_band, {}), (cf.solve_relaxed_frobenius, {"radius": 1.0})):
    row(solver, lambda f, s=solver, k=kw: s(X, **k), TypeError, "PairedMoments", f"{solver.__name__}-not-moments")
row(cf.solve_orthogonal_lsq, lambda f: cf.solve_orthogonal_lsq(_moments(), max_iter=0), ValueError, "max_iter",
    "solve_orthogonal_lsq-zero-max-iter")
row(cf.solve_orthogonal_lsq, lambda f: cf.solve_orthogonal_lsq(_moments(), restarts=-1), ValueError, "restarts",
    "solve_orthogonal_lsq-negative-restarts")
row(cf.solve_orthogonal_lsq, lambda f: cf.solve_orthogonal_lsq(_moments(), tol=math.nan), ValueError, "tol",
    "solve_orthogonal_lsq-nan-tol")
row(cf.fit_closed_form, lambda f: fcf(X, Y3, kind="orthogonal_lsq", max_iter=0), ValueError, "max_iter",
    "fcf-orthogonal_lsq-zero-max-iter")
row(cf.polar_factor, lambda f: cf.polar_factor(torch.ones(3, 2, dtype=torch.int64)), TypeError, "M",
    "polar_factor-int")
row(cf.generalized_procrustes, lambda f: cf.generalized_procrustes(X), TypeError, "views", "gpa-tensor-not-list")
row(cf.generalized_procrustes, lambda f: cf.generalized_procrustes([X, Y], center="no"), TypeError, "center",
    "gpa-center-str")
row(cf.solve_anchored, lambda f: cf.solve_anchored(_moments(), prior=W44[:3], gamma=1.0), ValueError, "prior",
    "solve_anchored-prior-shape")
row(cf.solve_anchored, lambda f: cf.solve_anchored(_moments(), prior=W44, gamma=-1.0), ValueError, "gamma",
    "solve_anchored-negative-gamma")
row(cf.solve_affine, lambda f: cf.solve_affine(_moments(), ridge=-1.0), ValueError, "ridge",
    "solve_affine-negative-ridge")
row(cf.solve_cca, lambda f: cf.solve_cca(_moments(), shrinkage=1.5), ValueError, "shrinkage",
    "solve_cca-shrinkage-above-1")
row(cf.solve_relaxed_penalty, lambda f: cf.solve_relaxed_penalty(_moments(), mu=-1.0), ValueError, "mu",
    "solve_relaxed_penalty-negative-mu")
row(cf.solve_relaxed_band, lambda f: cf.solve_relaxed_band(_moments(), lower=2.0, upper=1.0), ValueError, "lower",
    "solve_relaxed_band-inverted")
row(cf.solve_relaxed_frobenius, lambda f: cf.solve_relaxed_frobenius(_moments(), radius=-1.0), ValueError, "radius",
    "solve_relaxed_frobenius-negative-radius")

# ----------------------------------------------------------------------------------------------- rows: similarity
for fn in (similarity.linear_cka, similarity.procrustes_distance):
    n = fn.__name__
    row(fn, lambda f, g=fn: g(X_NAN, Y), ValueError, "NaN", f"{n}-nan")
    row(fn, lambda f, g=fn: g(X, Y[:-1]), ValueError, "same number of rows", f"{n}-row-mismatch")
    row(fn, lambda f, g=fn: g(X_INT, Y), TypeError, "X", f"{n}-int-data")
    row(fn, lambda f, g=fn: g(X_1D, Y), ValueError, "X", f"{n}-1d")

# ----------------------------------------------------------------------------------------------- rows: metrics
QL, GL = LABELS, LABELS
row(metrics.cmc, lambda f: metrics.cmc(X, Y, QL, GL, topk=1.5), ValueError, "topk", "cmc-float-topk")
row(metrics.fit_mse, lambda f: metrics.fit_mse(X, Y[:-1]), ValueError, "same shape", "fit_mse-shape-mismatch")
row(metrics.fit_mse, lambda f: metrics.fit_mse(X_NAN, Y), ValueError, "NaN", "fit_mse-nan")
row(metrics.fit_mse, lambda f: metrics.fit_mse(X[0], Y[0]), ValueError, "prediction", "fit_mse-1d")
row(metrics.gram_distortion, lambda f: metrics.gram_distortion(X, Y[:-1]), ValueError, "same number",
    "gram_distortion-row-mismatch")
row(metrics.gram_distortion, lambda f: metrics.gram_distortion(X, X_NAN), ValueError, "NaN", "gram_distortion-nan")
row(metrics.cmc, lambda f: metrics.cmc(X, Y, QL, GL, topk=0), ValueError, "topk", "cmc-zero-topk")
row(metrics.cmc, lambda f: metrics.cmc(X_NAN, Y, QL, GL), ValueError, "query contains NaN", "cmc-nan")
row(metrics.cmc, lambda f: metrics.cmc(X, Y3, QL, GL), ValueError, "feature dimension", "cmc-width-mismatch")
row(metrics.cmc, lambda f: metrics.cmc(X, Y, QL[:-1], GL), ValueError, "query_labels", "cmc-label-count")
row(metrics.cmc, lambda f: metrics.cmc(X, Y, QL.float(), GL), TypeError, "query_labels", "cmc-float-labels")
row(metrics.cmc, lambda f: metrics.cmc(X_EMPTY, Y, QL[:0], GL), ValueError, "query is empty", "cmc-empty")
row(metrics.cmc, lambda f: metrics.cmc(X, Y, QL, GL, chunk_size=0), ValueError, "chunk_size", "cmc-zero-chunk")
row(metrics.cmc, lambda f: metrics.cmc(X, Y, QL, GL, leave_one_out="yes"), TypeError, "leave_one_out",
    "cmc-loo-str")
row(metrics.mean_average_precision, lambda f: metrics.mean_average_precision(X, Y, QL, GL[:-1]), ValueError,
    "gallery_labels", "map-label-count")
row(metrics.mean_average_precision, lambda f: metrics.mean_average_precision(X_INT, Y, QL, GL), TypeError, "query",
    "map-int-features")
row(metrics.retrieval_report, lambda f: metrics.retrieval_report(X, Y, QL, GL, chunk_size=-1), ValueError,
    "chunk_size", "retrieval_report-negative-chunk")
row(metrics.retrieval_report, lambda f: metrics.retrieval_report(X, Y_INF_(), QL, GL), ValueError, "gallery",
    "retrieval_report-inf")


def Y_INF_():
    y = Y.clone()
    y[1, 1] = math.inf
    return y


row(metrics.compatibility_matrix, lambda f: metrics.compatibility_matrix([X], [Y], QL, GL, metric="top0"),
    ValueError, "metric", "compatibility_matrix-bad-metric")
row(metrics.compatibility_matrix, lambda f: metrics.compatibility_matrix([X], [Y, Y], QL, GL), ValueError,
    "gallery_features", "compatibility_matrix-count-mismatch")
row(metrics.compatibility_matrix, lambda f: metrics.compatibility_matrix([], [], QL, GL), ValueError, "query_features",
    "compatibility_matrix-empty")
row(metrics.compatibility_matrix_from_models, lambda f: metrics.compatibility_matrix_from_models(
    [nn.Identity()], X, Y, QL, GL, batch_size=0), ValueError, "batch_size", "compat_from_models-zero-batch")
row(metrics.compatibility_matrix_from_models, lambda f: metrics.compatibility_matrix_from_models(
    ["model"], X, Y, QL, GL), TypeError, "models", "compat_from_models-not-callable")
for fn in (metrics.empirical_compatibility, metrics.average_compatibility, metrics.average_multimodel_accuracy):
    row(fn, lambda f, g=fn: g(np.ones((2, 3))), ValueError, "square", f"{fn.__name__}-not-square")
    row(fn, lambda f, g=fn: g("M"), (TypeError, ValueError), "M", f"{fn.__name__}-string")
row(metrics.backfilling_order, lambda f: metrics.backfilling_order(Y, GL, order="best"), ValueError, "order",
    "backfilling_order-bad-order")
row(metrics.backfilling_order, lambda f: metrics.backfilling_order(Y, GL, order=np.arange(5)), ValueError,
    "order", "backfilling_order-short-permutation")
row(metrics.backfilling_curve, lambda f: metrics.backfilling_curve(X, Y, Y3, QL, GL), ValueError, "new_gallery",
    "backfilling_curve-width-mismatch")
row(metrics.backfilling_curve, lambda f: metrics.backfilling_curve(X, Y, Y, QL, GL, num_points=1), ValueError,
    "num_points", "backfilling_curve-one-point")
row(metrics.backfilling_curve, lambda f: metrics.backfilling_curve(X, Y, Y, QL, GL, fractions=[0.0, 1.5]),
    ValueError, "fractions", "backfilling_curve-fraction-above-1")
row(metrics.RetrievalReport, lambda f: metrics.retrieval_report(X, Y, QL, GL, compute_map="yes"), TypeError,
    "compute_map", "retrieval_report-compute-map-str")
row(metrics.BackfillingCurve, lambda f: metrics.backfilling_curve(X, Y, Y, QL, GL, metric="recall"), ValueError,
    "metric", "backfilling_curve-bad-metric")

# ----------------------------------------------------------------------------------------- rows: penalties, linalg
W_NAN = W44.clone()
W_NAN[0, 0] = math.nan
for fn in (penalties.frobenius_deviation, penalties.so_penalty, penalties.dso_penalty, penalties.mc_penalty,
           penalties.srip_penalty, penalties.randomized_deviation, linalg.small_gram, linalg.gram_deviation,
           linalg.orthogonality_error, linalg.tall, linalg.polar, linalg.newton_schulz_polar,
           linalg.spectral_norm_estimate):
    arg = next(iter(inspect.signature(fn).parameters))
    row(fn, lambda f, g=fn: g(X_1D), ValueError, arg, f"{fn.__module__.split('.')[-1]}.{fn.__name__}-1d")
    row(fn, lambda f, g=fn: g(X_INT), TypeError, arg, f"{fn.__module__.split('.')[-1]}.{fn.__name__}-int")
row(penalties.lambda_gate, lambda f: penalties.lambda_gate(torch.tensor(0.5), lam=1.0, alpha=1.0, gate="relu"),
    ValueError, "gate", "lambda_gate-bad-gate")
row(penalties.lambda_gate, lambda f: penalties.lambda_gate(torch.tensor(0.5), lam=-1.0, alpha=1.0), ValueError,
    "lam", "lambda_gate-negative-lam")
row(penalties.lambda_orthogonality, lambda f: penalties.lambda_orthogonality(W44, lam=-1.0), ValueError, "lam",
    "lambda_orthogonality-negative-lam")
row(penalties.lambda_orthogonality, lambda f: penalties.lambda_orthogonality(W44, lam=1.0, alpha=-1.0), ValueError,
    "alpha", "lambda_orthogonality-negative-alpha")
row(penalties.lambda_orthogonality, lambda f: penalties.lambda_orthogonality(W44, lam=1.0, alpha="steep"), ValueError,
    "alpha", "lambda_orthogonality-unknown-alpha-option")
row(penalties.resolved_alpha, lambda f: penalties.resolved_alpha("fast", 1.0), ValueError, "alpha",
    "resolved_alpha-unknown-option")
row(penalties.resolved_alpha, lambda f: penalties.resolved_alpha(0.0, 1.0), ValueError, "alpha",
    "resolved_alpha-zero-alpha")
row(penalties.resolved_alpha, lambda f: penalties.resolved_alpha("auto", -1.0), ValueError, "lam",
    "resolved_alpha-negative-lam")
row(penalties.srip_penalty, lambda f: penalties.srip_penalty(W44, n_iter=0), ValueError, "n_iter",
    "srip_penalty-zero-iterations")
row(penalties.randomized_deviation, lambda f: penalties.randomized_deviation(W44, num_probes=0), ValueError,
    "num_probes", "randomized_deviation-zero-probes")
row(linalg.newton_schulz_polar, lambda f: linalg.newton_schulz_polar(W44, steps=-1), ValueError, "steps",
    "newton_schulz_polar-negative-steps")
row(linalg.newton_schulz_polar, lambda f: linalg.newton_schulz_polar(W44, order=5), ValueError, "order",
    "newton_schulz_polar-bad-order")
row(linalg.polar, lambda f: linalg.polar(W_NAN), ValueError, "NaN", "polar-nan")
row(linalg.skew_retraction, lambda f: linalg.skew_retraction(Q44, W44[:3, :3]), ValueError, "skew",
    "skew_retraction-shape")
row(linalg.skew_retraction, lambda f: linalg.skew_retraction(Q44, W44 - W44.T, kind="nope"), ValueError, "kind",
    "skew_retraction-bad-kind")
row(linalg.skew_retraction_kind, lambda f: linalg.skew_retraction_kind(X_1D), ValueError, "skew",
    "skew_retraction_kind-1d")
row(linalg.random_orthogonal, lambda f: linalg.random_orthogonal(0, 4), ValueError, "out_features",
    "random_orthogonal-zero")
row(linalg.random_orthogonal, lambda f: linalg.random_orthogonal(4, 4, dtype=torch.int64), TypeError, "dtype",
    "random_orthogonal-int-dtype")
row(linalg.random_orthogonal, lambda f: linalg.random_orthogonal(4, 4, device="cuda"), ValueError, "no CUDA GPU",
    "random_orthogonal-cuda-without-gpu", cuda=True)
row(linalg.semi_identity, lambda f: linalg.semi_identity(4, -1), ValueError, "in_features", "semi_identity-negative")
row(linalg.semi_identity, lambda f: linalg.semi_identity(4, 4, dtype=torch.int64), TypeError, "dtype",
    "semi_identity-int-dtype")
row(linalg.orthonormality_rounding, lambda f: linalg.orthonormality_rounding(0, torch.float32), ValueError, "k",
    "orthonormality_rounding-zero-k")
row(linalg.orthonormality_rounding, lambda f: linalg.orthonormality_rounding(4, torch.int64), TypeError, "dtype",
    "orthonormality_rounding-int-dtype")
row(linalg.skew_retraction_kind_for_norm, lambda f: linalg.skew_retraction_kind_for_norm(-1.0, torch.float32),
    ValueError, "sigma", "skew_retraction_kind_for_norm-negative")
row(linalg.skew_retraction_kind_for_norm, lambda f: linalg.skew_retraction_kind_for_norm(0.1, torch.int64),
    TypeError, "dtype", "skew_retraction_kind_for_norm-int-dtype")
row(penalties.lambda_slope, lambda f: penalties.lambda_slope(1.0, 2.0, alpha=0.0), ValueError, "alpha",
    "lambda_slope-zero-alpha")
row(penalties.lambda_slope, lambda f: penalties.lambda_slope(-1.0, 2.0, 10.0), ValueError, "n",
    "lambda_slope-negative-n")
row(penalties.lambda_equilibrium, lambda f: penalties.lambda_equilibrium(-1.0, 10.0, 1.0), ValueError, "lam",
    "lambda_equilibrium-negative-lam")
row(penalties.lambda_equilibrium, lambda f: penalties.lambda_equilibrium(2.0, 10.0, math.nan), ValueError, "pull",
    "lambda_equilibrium-nan-pull")

# ----------------------------------------------------------------------------------------------- rows: training
FAST = dict(progress=False)


def fa(module=None, source=X, target=Y, **kw):
    kw.setdefault("epochs", 1)
    kw.setdefault("batch_size", 8)
    return training.fit_alignment(module if module is not None else ro.AffineMap(4, 4), source, target, **FAST,
                                  **kw)


row(training.fit_alignment, lambda f: fa(epochs=0), ValueError, "epochs", "fit_alignment-zero-epochs")
row(training.fit_alignment, lambda f: fa(epochs=2.5), ValueError, "epochs", "fit_alignment-float-epochs")
row(training.fit_alignment, lambda f: fa(batch_size=0), ValueError, "batch_size", "fit_alignment-zero-batch")
row(training.fit_alignment, lambda f: fa(lr=-1e-3), ValueError, "lr", "fit_alignment-negative-lr")
row(training.fit_alignment, lambda f: fa(lr=math.nan), ValueError, "lr", "fit_alignment-nan-lr")
row(training.fit_alignment, lambda f: fa(lr=1e6, epochs=20), training.TrainingDivergedError, "training diverged",
    "fit_alignment-diverged-lr-1e6")
row(training.fit_alignment, lambda f: fa(source=X * 1e30, target=Y * 1e30), ValueError, "overflow float32",
    "fit_alignment-data-1e30-float32")
row(training.fit_alignment, lambda f: fa(source=X_NAN), ValueError, "source contains NaN", "fit_alignment-nan")
row(training.fit_alignment, lambda f: fa(target=X_INF), ValueError, "target contains NaN or Inf",
    "fit_alignment-inf")
row(training.fit_alignment, lambda f: fa(source=X_INT), TypeError, "source", "fit_alignment-int-data")
row(training.fit_alignment, lambda f: fa(source=X_CPLX), TypeError, "source", "fit_alignment-complex-data")
row(training.fit_alignment, lambda f: fa(source=X[:-1]), ValueError, "same number of rows",
    "fit_alignment-row-mismatch")
row(training.fit_alignment, lambda f: fa(target=Y3), ValueError, "out_features", "fit_alignment-width-mismatch")
row(training.fit_alignment, lambda f: fa(source=X_1D), ValueError, "2-dimensional", "fit_alignment-1d")
row(training.fit_alignment, lambda f: fa(source=X_EMPTY, target=Y[:0]), ValueError, "empty", "fit_alignment-empty")
row(training.fit_alignment, lambda f: fa(source="X"), TypeError, "source", "fit_alignment-string-data")
row(training.fit_alignment, lambda f: fa(module="map"), TypeError, "module", "fit_alignment-not-a-module")
row(training.fit_alignment, lambda f: fa(device="cuda"), ValueError, "no CUDA GPU",
    "fit_alignment-cuda-without-gpu", cuda=True)
row(training.fit_alignment, lambda f: fa(device="gpu"), ValueError, "unknown device", "fit_alignment-bad-device")
row(training.fit_alignment, lambda f: fa(optimizer="adam"), TypeError, "optimizer must be",
    "fit_alignment-optimizer-string")
row(training.fit_alignment, lambda f: fa(optimizer=torch.optim.Adam), TypeError, "optimizer must be",
    "fit_alignment-optimizer-class")
row(training.fit_alignment, lambda f: fa(optimizer=torch.optim.SGD(ro.AffineMap(4, 4).parameters(), lr=0.1)),
    ValueError, "none of the module's parameters", "fit_alignment-optimizer-of-another-module")
row(training.fit_alignment, lambda f: fa(amp="fp8"), ValueError, "amp", "fit_alignment-bad-amp")
row(training.fit_alignment, lambda f: fa(amp="fp16"), ValueError, "CUDA", "fit_alignment-fp16-on-cpu")
row(training.fit_alignment, lambda f: fa(clip_grad_norm=0.0), ValueError, "clip_grad_norm", "fit_alignment-zero-clip")
row(training.fit_alignment, lambda f: fa(seed=-1), ValueError, "seed", "fit_alignment-negative-seed")
row(training.fit_alignment, lambda f: fa(val=(X,)), ValueError, "val", "fit_alignment-val-one-array")
row(training.fit_alignment, lambda f: fa(val=(X, Y3)), ValueError, "out_features", "fit_alignment-val-width")
row(training.fit_alignment, lambda f: fa(early_stopping=2), ValueError, "early_stopping",
    "fit_alignment-early-stopping-without-val")
row(training.fit_alignment, lambda f: fa(metric="top1", val=(X, Y)), TypeError, "metric",
    "fit_alignment-metric-string")
row(training.fit_alignment, lambda f: fa(resume=True), ValueError, "checkpoint", "fit_alignment-resume-without-file")
row(training.fit_alignment, lambda f: fa(checkpoint=f.p("ckpt_trunc.pt"), resume=True), ValueError, "truncated",
    "fit_alignment-resume-truncated-checkpoint")
row(training.fit_alignment, lambda f: fa(callbacks=print), TypeError, "callbacks", "fit_alignment-callbacks-function")
row(training.fit_alignment, lambda f: fa(init="random"), ValueError, "init must be one of", "fit_alignment-bad-init")
row(training.fit_alignment, lambda f: fa(tol=-1e-4), ValueError, "tol", "fit_alignment-negative-tol")
row(training.fit_alignment, lambda f: fa(tol_patience=0), ValueError, "tol_patience", "fit_alignment-zero-patience")
row(training.fit_alignment, lambda f: fa(warmup=-1), ValueError, "warmup", "fit_alignment-negative-warmup")
row(training.fit_alignment, lambda f: fa(lr_schedule="cosine"), ValueError, "lr_schedule",
    "fit_alignment-unknown-lr-schedule")
row(training.fit_alignment, lambda f: fa(regularizer_weight="heavy"), (TypeError, ValueError), "regularizer_weight",
    "fit_alignment-unknown-regularizer-weight")
row(training.fit_alignment, lambda f: fa(regularizer_weight=-1.0), ValueError, "regularizer_weight",
    "fit_alignment-negative-regularizer-weight")
row(training.initialize_map, lambda f: training.initialize_map(ro.AffineMap(4, 4), X, Y, init="random"), ValueError,
    "init must be one of", "initialize_map-bad-init")
row(training.initialize_map, lambda f: training.initialize_map("map", X, Y), TypeError, "module",
    "initialize_map-not-a-module")
row(training.initialize_map, lambda f: training.initialize_map(ro.AffineMap(4, 4), X, Y3), ValueError,
    "out_features", "initialize_map-width-mismatch")
row(training.initialize_map, lambda f: training.initialize_map(ro.OrthogonalLinear(4, 4), X_NAN, Y), ValueError,
    "NaN", "initialize_map-nan")
row(training.default_lr, lambda f: training.default_lr("map"), TypeError, "module", "default_lr-not-a-module")
row(training.fit_alignment, lambda f: fa(divergence_factor=0.5), ValueError, "divergence_factor",
    "fit_alignment-divergence-factor-below-1")
row(training.fit_alignment, lambda f: fa(drop_last=True, batch_size=64), ValueError, "no complete batch",
    "fit_alignment-no-complete-batch")
row(training.fit_alignment, lambda f: fa(module=ro.AffineMap(4, 4, dtype=torch.float64), loss_fn="mse"), TypeError,
    "loss_fn", "fit_alignment-loss-string")
row(training.Trainer, lambda f: training.Trainer(ro.AffineMap(4, 4), epochs=1, batch_size=8, **FAST).fit(X), TypeError,
    "source, target", "Trainer.fit-one-array")
row(training.Trainer, lambda f: training.Trainer(ro.AffineMap(4, 4), epochs=1, batch_size=8, weight_decay=-1.0),
    ValueError, "weight_decay", "Trainer-negative-weight-decay")
row(training.Trainer, lambda f: training.Trainer(ro.AffineMap(4, 4), epochs=1, batch_size=8, log_every=0),
    ValueError, "log_every", "Trainer-zero-log-every")


def fp(**kw):
    b, fwd = _module_pair()
    kw.setdefault("epochs", 1)
    kw.setdefault("batch_size", 8)
    args = kw.pop("args", (X, Y))
    return training.fit_pair(b, fwd, *args, **FAST, **kw)


row(training.fit_pair, lambda f: fp(args=(X, Y, LABELS.float())), TypeError, "labels", "fit_pair-float-labels")
row(training.fit_pair, lambda f: fp(args=(X, Y, LABELS[:-1])), ValueError, "same number of rows",
    "fit_pair-label-count")
row(training.fit_pair, lambda f: fp(args=(X, Y3)), ValueError, "out_features", "fit_pair-width")
row(training.fit_pair, lambda f: fp(weights=(1.0, 1.0)), ValueError, "weights", "fit_pair-two-weights")
row(training.fit_pair, lambda f: fp(weights=(1.0, -1.0, 1.0)), ValueError, "weights[1]", "fit_pair-negative-weight")
row(training.fit_pair, lambda f: fp(temperature=0.0), ValueError, "temperature", "fit_pair-zero-temperature")
row(training.fit_pair, lambda f: fp(device="cuda"), ValueError, "no CUDA GPU", "fit_pair-cuda-without-gpu",
    cuda=True)
row(training.PairTrainer, lambda f: training.PairTrainer(*_module_pair(), epochs=1, batch_size=8,
                                                         losses="mse").fit(X, Y), TypeError, "losses",
    "PairTrainer-losses-string")
row(training.PairMaps, lambda f: training.PairMaps(ro.AffineMap(4, 4), "F"), TypeError, "forward_map",
    "PairMaps-not-a-module")
row(training.make_optimizer, lambda f: training.make_optimizer(ro.AffineMap(4, 4), lr=0.0), ValueError, "lr",
    "make_optimizer-zero-lr")
row(training.train_module, lambda f: training.train_module(nn.Linear(2, 1), lambda m, a: m(a).sum(),
    [torch.randn(4, 2)], epochs=0, batch_size=2, lr=0.1), ValueError, "epochs", "train_module-zero-epochs")
row(training.train_module, lambda f: training.train_module(nn.Linear(2, 1), lambda m, a, b: m(a).sum(),
    [torch.randn(4, 2), torch.randn(3)], epochs=1, batch_size=2, lr=0.1), ValueError, "rows",
    "train_module-unpaired-rows")
row(training.train_module, lambda f: training.train_module(nn.Linear(2, 1), lambda m, a: m(a).sum() * math.nan,
    [torch.randn(4, 2)], epochs=1, batch_size=2, lr=0.1), ValueError, "loss became nan", "train_module-nan-loss")
row(training.train_classifier, lambda f: training.train_classifier(nn.Linear(2, 3), torch.randn(4, 2),
    torch.tensor([0, 1, 2, 0]), epochs=1, batch_size=0, lr=0.1, seed=0), ValueError, "batch_size",
    "train_classifier-zero-batch")
row(training.train_classifier, lambda f: training.train_classifier(nn.Linear(2, 3), torch.randn(4, 2),
    torch.tensor([0, 1, 2, 0]), epochs=1, batch_size=2, lr=-1.0, seed=0), ValueError, "lr",
    "train_classifier-negative-lr")
row(training.make_optimizer, lambda f: training.make_optimizer("model", lr=1e-3), TypeError, "module",
    "make_optimizer-not-a-module")
row(training.register_hard_maps, lambda f: training.register_hard_maps("model", torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)),
    TypeError, "module must be a torch.nn.Module", "register_hard_maps-not-a-module")
row(training.register_hard_maps, lambda f: training.register_hard_maps(nn.Linear(2, 2), [W44]), TypeError,
    "optimizer must be a torch.optim.Optimizer", "register_hard_maps-not-an-optimizer")
row(ro.OrthogonalLinear.register_optimizer, lambda f: ro.OrthogonalLinear(4, 3).register_optimizer("adam"),
    TypeError, "optimizer must be a torch.optim.Optimizer", "register_optimizer-not-an-optimizer")
row(linalg.check_orthonormal, lambda f: linalg.check_orthonormal(2 * torch.eye(3), "W"), ValueError,
    "W must have orthonormal columns", "check_orthonormal-scaled")
row(linalg.check_orthonormal, lambda f: linalg.check_orthonormal([[1.0]], "W"), TypeError, "W", "check_orthonormal-list")
row(linalg.orthonormality_tolerance, lambda f: linalg.orthonormality_tolerance(np.eye(3)), TypeError, "weight",
    "orthonormality_tolerance-numpy")
row(ro.orthogonal, lambda f: ro.orthogonal("layer"), TypeError, "module must be a torch.nn.Module",
    "orthogonal-not-a-module")
row(ro.orthogonal, lambda f: ro.orthogonal(nn.Linear(3, 3), "weights"), ValueError, "not a parameter",
    "orthogonal-unknown-name")
row(ro.orthogonal, lambda f: ro.orthogonal(nn.Linear(3, 3), "bias"), ValueError, "2-dimensional",
    "orthogonal-1d-parameter")
row(ro.orthogonal, lambda f: ro.orthogonal(ro.orthogonal(nn.Linear(3, 3))), ValueError, "constrained already",
    "orthogonal-twice")
row(ro.orthogonal, lambda f: ro.orthogonal(nn.Linear(3, 4), group="SO"), ValueError, "group='SO'",
    "orthogonal-so-rectangular")
row(ro.orthogonal, lambda f: ro.orthogonal(nn.Linear(3, 3), init="kaiming"), ValueError, "init must be one of",
    "orthogonal-bad-init")
row(ro.lambda_orthogonal, lambda f: ro.lambda_orthogonal(nn.Linear(3, 3), lam=-1.0), ValueError, "lam",
    "lambda_orthogonal-negative-lam")
row(ro.lambda_orthogonal, lambda f: ro.lambda_orthogonal(nn.Linear(3, 3), alpha=0.0), ValueError, "alpha",
    "lambda_orthogonal-zero-alpha")
row(ro.lambda_orthogonal, lambda f: ro.lambda_orthogonal(nn.Linear(3, 3), name=None), TypeError, "name must be a str",
    "lambda_orthogonal-name-not-str")
row(training.parameter_groups, lambda f: training.parameter_groups(ro.AffineMap(4, 4), lr=1e-3, weight_decay=-1.0),
    ValueError, "weight_decay", "parameter_groups-negative-decay")
row(training.save_checkpoint, lambda f: training.save_checkpoint([1, 2], f.p("c.pt")), TypeError, "state must be",
    "save_checkpoint-not-a-dict")
row(training.save_checkpoint, lambda f: training.save_checkpoint({"a": 1}, f.p("a_file/c.pt")), OSError,
    "cannot write the training checkpoint", "save_checkpoint-parent-is-a-file")
row(training.save_checkpoint, lambda f: training.save_checkpoint({"a": 1}, f.d), IsADirectoryError, "is a folder",
    "save_checkpoint-folder")
row(training.load_checkpoint, lambda f: training.load_checkpoint(f.p("nope.pt")), FileNotFoundError, "not found",
    "load_checkpoint-missing")
row(training.load_checkpoint, lambda f: training.load_checkpoint(f.p("ckpt_trunc.pt")), ValueError, "truncated",
    "load_checkpoint-truncated")
row(training.load_checkpoint, lambda f: training.load_checkpoint(f.p("map.pt")), ValueError,
    "not a relaxedortho training checkpoint", "load_checkpoint-a-map-file")
row(training.load_checkpoint, lambda f: training.load_checkpoint(f.p("pickled_module.pt")), ValueError,
    "pickled Python objects", "load_checkpoint-pickled")
row(training.gather_with_grad, lambda f: training.gather_with_grad("x"), TypeError, "x", "gather_with_grad-not-tensor")
row(training.launch, lambda f: training.launch(print, 0), ValueError, "world_size", "launch-zero-world")
row(training.launch, lambda f: training.launch("f", 2), TypeError, "fn", "launch-not-callable")
row(training.launch, lambda f: training.launch(print, 2, backend="mpi2"), ValueError, "backend", "launch-bad-backend")


def sw(**kw):
    kw.setdefault("epochs", 1)
    kw.setdefault("batch_size", 8)
    args = kw.pop("args", (X, Y))
    return training.lambda_sweep(*args, kw.pop("lams", [0.0, 1.0]), **kw)


row(training.lambda_sweep, lambda f: sw(lams=[-1.0]), ValueError, "lams[0]", "lambda_sweep-negative-lam")
row(training.lambda_sweep, lambda f: sw(init="identity"), ValueError, "init must be one of", "lambda_sweep-bad-init")
row(training.lambda_sweep, lambda f: sw(lams=1.0), TypeError, "lams must be a sequence", "lambda_sweep-lams-float")
row(training.lambda_sweep, lambda f: sw(lams=[], ends=False), ValueError, "nothing to sweep", "lambda_sweep-empty")
row(training.lambda_sweep, lambda f: sw(holdout=1.0), ValueError, "holdout", "lambda_sweep-holdout-1")
row(training.lambda_sweep, lambda f: sw(device="cuda"), ValueError, "no CUDA GPU", "lambda_sweep-cuda-without-gpu",
    cuda=True)
row(training.lambda_sweep, lambda f: sw(args=(X, Y[:-1])), ValueError, "same number of rows",
    "lambda_sweep-row-mismatch")
row(training.lambda_sweep, lambda f: sw(args=(X_NAN, Y)), ValueError, "NaN", "lambda_sweep-nan")
row(training.lambda_sweep, lambda f: sw(labels=LABELS.float()), TypeError, "labels", "lambda_sweep-float-labels")
row(training.lambda_sweep, lambda f: sw(metric="top1"), TypeError, "metric", "lambda_sweep-metric-string")
row(training.lambda_sweep, lambda f: sw(lr=1e6, epochs=20), training.TrainingDivergedError, "diverged",
    "lambda_sweep-diverged")
row(training.neighbour_agreement, lambda f: training.neighbour_agreement(X, Y[:-1]), ValueError, "same number",
    "neighbour_agreement-row-mismatch")
row(training.neighbour_agreement, lambda f: training.neighbour_agreement(X_NAN, Y), ValueError, "NaN",
    "neighbour_agreement-nan")
row(training.neighbour_agreement, lambda f: training.neighbour_agreement(X, Y, chunk=0), ValueError, "chunk",
    "neighbour_agreement-zero-chunk")
row(training.plot_tradeoff, lambda f: training.plot_tradeoff([{"lam": 1.0}]), TypeError, "SweepTable",
    "plot_tradeoff-list")
row(training.plot_tradeoff, lambda f: training.plot_tradeoff(training.SweepTable()), ValueError, "empty",
    "plot_tradeoff-empty")
row(training.default_retrieval_metric, lambda f: training.default_retrieval_metric(X, Y3, None), ValueError,
    "feature dimension", "default_retrieval_metric-width")

# ----------------------------------------------------------------------------------------------- rows: losses
row(losses.backward_loss, lambda f: losses.backward_loss(X, Y3), ValueError, "shape", "backward_loss-shape")
row(losses.backward_loss, lambda f: losses.backward_loss(X, Y, reduction="avg"), ValueError, "reduction",
    "backward_loss-bad-reduction")
row(losses.forward_loss, lambda f: losses.forward_loss(X, Y3), ValueError, "shape", "forward_loss-shape")
row(losses.forward_loss, lambda f: losses.forward_loss(X_INT, Y), TypeError, "float", "forward_loss-int")
row(losses.supervised_contrastive, lambda f: losses.supervised_contrastive(X, Y, LABELS, temperature=0.0), ValueError,
    "temperature", "supervised_contrastive-zero-temperature")
row(losses.supervised_contrastive, lambda f: losses.supervised_contrastive(X, Y3), ValueError, "dimension",
    "supervised_contrastive-width")
row(losses.supervised_contrastive, lambda f: losses.supervised_contrastive(X, Y, LABELS[:-1]), ValueError,
    "labels_a", "supervised_contrastive-label-count")
row(losses.influence_loss, lambda f: losses.influence_loss(X, LABELS, nn.Linear(3, 5)), ValueError, "old_classifier",
    "influence_loss-classifier-width")
row(losses.influence_loss, lambda f: losses.influence_loss(X, LABELS + 10, nn.Linear(4, 5)), ValueError, "labels",
    "influence_loss-label-out-of-range")

# ----------------------------------------------------------------------------------------------- rows: transfer
MODEL = _TwoLayer()
TAU = {k: torch.zeros_like(v) for k, v in MODEL.state_dict().items()}
row(transfer.task_vector, lambda f: transfer.task_vector(MODEL, nn.Linear(4, 4)), ValueError, "do not match",
    "task_vector-layout")
row(transfer.task_vector, lambda f: transfer.task_vector("ft", MODEL), TypeError, "finetuned",
    "task_vector-string")
row(transfer.apply_task_vector, lambda f: transfer.apply_task_vector(MODEL, TAU, scale=-1.0), ValueError, "scale",
    "apply_task_vector-negative-scale")
row(transfer.apply_task_vector, lambda f: transfer.apply_task_vector("model", TAU), TypeError, "model must be",
    "apply_task_vector-model-string")
row(transfer.apply_task_vector, lambda f: transfer.apply_task_vector(MODEL, {"l9.weight": torch.zeros(1)}),
    ValueError, "l9.weight", "apply_task_vector-unknown-key")
row(transfer.transfer_task_vector, lambda f: transfer.transfer_task_vector("model", TAU, {"l1": None}), TypeError,
    "target must be", "transfer_task_vector-target-string")
row(transfer.transfer_task_vector, lambda f: transfer.transfer_task_vector(MODEL, TAU, {}), TypeError, "maps",
    "transfer_task_vector-empty-maps")
row(transfer.transfer_task_vector, lambda f: transfer.transfer_task_vector(MODEL, TAU, {"l3": None}), ValueError,
    "l3", "transfer_task_vector-unknown-layer")
row(transfer.transfer_task_vector, lambda f: transfer.transfer_task_vector(MODEL, TAU, {"l1": "U"}, strict=False),
    TypeError,
    "u_in", "transfer_task_vector-map-string")
row(transfer.transfer_task_vector, lambda f: transfer.transfer_task_vector(
    MODEL, TAU, {"l1": None, "l2": (None, None)}, scale=-1.0), ValueError, "scale",
    "transfer_task_vector-negative-scale")
row(transfer.TransferredLinear, lambda f: transfer.TransferredLinear(nn.Linear(4, 4), X_NAN[:4]), ValueError, "NaN",
    "TransferredLinear-nan-tau")
row(transfer.TransferredLinear, lambda f: transfer.TransferredLinear(nn.Linear(4, 4), W44,
                                                                     u_in=ro.AffineMap(4, 4)), ValueError, "bias",
    "TransferredLinear-map-with-bias")
row(transfer.TransferredLinear, lambda f: transfer.TransferredLinear(nn.Conv1d(1, 1, 1), W44), TypeError, "base",
    "TransferredLinear-conv-base")
row(transfer.merge_transferred, lambda f: transfer.merge_transferred("model"), TypeError, "model must be",
    "merge_transferred-string")
row(transfer.transfer_maps, lambda f: transfer.transfer_maps("model"), TypeError, "model must be",
    "transfer_maps-string")
row(transfer.soft_orthogonal_map, lambda f: transfer.soft_orthogonal_map(4, beta=-1.0), ValueError, "beta",
    "soft_orthogonal_map-negative-beta")
row(transfer.soft_orthogonal_map, lambda f: transfer.soft_orthogonal_map(0), ValueError, "features",
    "soft_orthogonal_map-zero")
row(transfer.procrustes_weight, lambda f: transfer.procrustes_weight(X, Y[:-1]), ValueError, "same number of rows",
    "procrustes_weight-row-mismatch")
row(transfer.procrustes_weight, lambda f: transfer.procrustes_weight(X_NAN, Y), ValueError, "NaN",
    "procrustes_weight-nan")
row(transfer.layer_inputs, lambda f: transfer.layer_inputs(MODEL, X, "l1"), TypeError, "wrap one name",
    "layer_inputs-name-string")
row(transfer.layer_inputs, lambda f: transfer.layer_inputs(MODEL, X, ["l9"]), ValueError, "l9",
    "layer_inputs-unknown-layer")
row(transfer.layer_inputs, lambda f: transfer.layer_inputs(MODEL, X.numpy(), ["l1"]), TypeError, "inputs",
    "layer_inputs-numpy")
for fn in (transfer.train_transfer_maps, transfer.finetune_few_shot):
    n = fn.__name__
    row(fn, lambda f, g=fn: g(_transferred(), X, LABELS.float()), TypeError, "labels", f"{n}-float-labels")
    row(fn, lambda f, g=fn: g(_transferred(), X_NAN, LABELS % 3), ValueError, "NaN", f"{n}-nan-inputs")
    row(fn, lambda f, g=fn: g(_transferred(), X, LABELS[:-1]), ValueError, "paired", f"{n}-label-count")
    row(fn, lambda f, g=fn: g(_transferred(), X, LABELS + 3), ValueError, "number of classes",
        f"{n}-label-out-of-range")
    row(fn, lambda f, g=fn: g(_transferred(), X, LABELS % 3, steps=0), ValueError, "steps", f"{n}-zero-steps")
    row(fn, lambda f, g=fn: g(_transferred(), X, LABELS % 3, lr=-1.0), ValueError, "lr", f"{n}-negative-lr")
    row(fn, lambda f, g=fn: g(_transferred(), X, LABELS % 3, batch_size=0), ValueError, "batch_size",
        f"{n}-zero-batch")
    row(fn, lambda f, g=fn: g("model", X, LABELS % 3), TypeError, "model must be", f"{n}-model-string")
row(transfer.finetune_few_shot, lambda f: transfer.finetune_few_shot(_overflowing(), X * 1e10, LABELS % 3),
    training.NonFiniteLossError, "NaN or Inf at step 1", "finetune_few_shot-overflowing-logits")
row(transfer.run_transfer_demo, lambda f: transfer.run_transfer_demo(f.p("a_file/sub"), quick=True, progress=False),
    OSError, "a_file", "run_transfer_demo-unwritable-out")
row(transfer.run_transfer_demo, lambda f: transfer.run_transfer_demo(f.p("t"), task="nope", quick=True,
                                                                     progress=False), ValueError, "task",
    "run_transfer_demo-bad-task")
row(transfer.run_transfer_demo, lambda f: transfer.run_transfer_demo(f.p("t"), scale=-1.0, quick=True,
                                                                     progress=False), ValueError, "scale",
    "run_transfer_demo-negative-scale")

# ------------------------------------------------------------------- rows: Riemannian tools, the permutation solver
def _rotation(n, seed, sign=1.0):
    """An n x n float64 orthogonal matrix with determinant ``sign``, far from the identity."""
    q = torch.linalg.qr(_randn(n, n, dtype=torch.float64, seed=seed))[0]
    if float(torch.linalg.det(q)) * sign < 0:
        q[:, 0] = -q[:, 0]
    return q


ROT = _rotation(4, 10)                                           # det +1
ROT_B = _rotation(4, 11)                                         # det +1
REFL = _rotation(4, 12, sign=-1.0)                               # det -1
HALF_TURN = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64))   # a rotation by pi: cut locus
ROT_NAN = ROT.clone()
ROT_NAN[1, 2] = math.nan
ST52 = torch.linalg.qr(_randn(5, 2, dtype=torch.float64, seed=13))[0]          # a Stiefel point, St(5, 2)
ST52_B = torch.linalg.qr(_randn(5, 2, dtype=torch.float64, seed=14))[0]
SKEW = W44.double() - W44.double().T
NOT_SKEW = W44.double()
W_EXP = [W44 + 0.01 * _randn(4, 4, seed=15), W44 + 0.01 * _randn(4, 4, seed=16)]     # two fine-tuned "experts"


def _mlp(hidden=4, bias=True, between=None):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, hidden, bias=bias), between or nn.ReLU(), nn.Linear(hidden, 2))


def _nan_mlp():
    m = _mlp()
    with torch.no_grad():
        m[0].weight[0, 0] = math.nan
    return m


def _perm_moments(**kw):
    return cf.accumulate_moments(X.double(), Y.double(), **kw)


# the group and its components
row(rm.check_orthogonal, lambda f: rm.check_orthogonal(W44), ValueError, "R must be orthogonal",
    "check_orthogonal-not-orthogonal")
row(rm.check_orthogonal, lambda f: rm.check_orthogonal(torch.stack([ROT, ROT_B, W44.double()])), ValueError,
    "R[2] must be orthogonal", "check_orthogonal-batch-names-the-bad-matrix")
row(rm.check_orthogonal, lambda f: rm.check_orthogonal(ROT_NAN), ValueError, "R contains NaN",
    "check_orthogonal-nan")
row(rm.check_orthogonal, lambda f: rm.check_orthogonal(torch.eye(4, dtype=torch.int64)), TypeError,
    "R must have a floating dtype", "check_orthogonal-int")
row(rm.check_orthogonal, lambda f: rm.check_orthogonal(ST52), ValueError, "R must be square",
    "check_orthogonal-not-square")
row(rm.check_orthogonal, lambda f: rm.check_orthogonal(ST52.T, square=False), ValueError, "R must be tall",
    "check_orthogonal-wide")
row(rm.check_orthogonal, lambda f: rm.check_orthogonal(ROT[0]), ValueError, "R must have at least 2 dimensions",
    "check_orthogonal-1d")
row(rm.check_orthogonal, lambda f: rm.check_orthogonal(torch.zeros(0, 4, 4)), ValueError, "R is empty",
    "check_orthogonal-empty")
row(rm.check_orthogonal, lambda f: rm.check_orthogonal(ROT.half()), TypeError, "R must be float32 or float64",
    "check_orthogonal-half")
row(rm.determinant_sign, lambda f: rm.determinant_sign(ST52), ValueError, "R must be square",
    "determinant_sign-not-square")
row(rm.determinant_sign, lambda f: rm.determinant_sign(ROT[0]), ValueError, "R must be square",
    "determinant_sign-1d")
row(rm.determinant_sign, lambda f: rm.determinant_sign(ROT_NAN), ValueError, "R contains NaN",
    "determinant_sign-nan")
row(rm.determinant_sign, lambda f: rm.determinant_sign(torch.eye(3, dtype=torch.int64)), TypeError,
    "R must have a floating dtype", "determinant_sign-int")
row(rm.determinant_sign, lambda f: rm.determinant_sign("R"), TypeError, "R must be a torch.Tensor",
    "determinant_sign-string")
row(rm.special_polar, lambda f: rm.special_polar(W44[:, :3]), ValueError, "M must be square",
    "special_polar-not-square")
row(rm.special_polar, lambda f: rm.special_polar(X_NAN[:4]), ValueError, "M contains NaN", "special_polar-nan")
row(rm.special_polar, lambda f: rm.special_polar(X_INF[:4]), ValueError, "M contains NaN or Inf", "special_polar-inf")
row(rm.special_polar, lambda f: rm.special_polar(torch.eye(3, dtype=torch.int64)), TypeError,
    "M must have a floating dtype", "special_polar-int")
row(rm.special_polar, lambda f: rm.special_polar(torch.zeros(0, 0)), ValueError, "M is empty", "special_polar-empty")
row(rm.special_polar, lambda f: rm.special_polar(W44, 0.0), ValueError, "sign must hold only +1 and -1",
    "special_polar-sign-zero")
row(rm.special_polar, lambda f: rm.special_polar(W44, 2.0), ValueError, "sign must hold only +1 and -1",
    "special_polar-sign-two")
row(rm.special_polar, lambda f: rm.special_polar(W44, math.nan), ValueError, "sign", "special_polar-sign-nan")
row(rm.special_polar, lambda f: rm.special_polar(W44, "+"), TypeError, "sign must be +1, -1",
    "special_polar-sign-string")
row(rm.special_polar, lambda f: rm.special_polar(torch.stack([W44, W44]), torch.tensor([1.0, -1.0, 1.0])),
    ValueError, "sign of shape (3,) does not broadcast", "special_polar-sign-shape")

# geodesics of O(n)
row(rm.skew_log, lambda f: rm.skew_log(W44), ValueError, "R must be orthogonal", "skew_log-not-orthogonal")
row(rm.skew_log, lambda f: rm.skew_log(REFL), ValueError, "R has determinant -1", "skew_log-reflection")
row(rm.skew_log, lambda f: rm.skew_log(HALF_TURN), ValueError, "R has the eigenvalue -1", "skew_log-cut-locus")
row(rm.skew_log, lambda f: rm.skew_log(ROT_NAN), ValueError, "R contains NaN", "skew_log-nan")
row(rm.skew_log, lambda f: rm.skew_log(torch.eye(4, dtype=torch.int64)), TypeError, "R must have a floating dtype",
    "skew_log-int")
row(rm.skew_log, lambda f: rm.skew_log(ST52), ValueError, "R must be square", "skew_log-not-square")
row(rm.skew_log, lambda f: rm.skew_log(ST52, check=False), ValueError, "R must be a non-empty batch of square",
    "skew_log-unchecked-not-square")
row(rm.skew_log, lambda f: rm.skew_log(ROT[0], check=False), ValueError, "R must be a non-empty batch of square",
    "skew_log-unchecked-1d")
row(rm.skew_log, lambda f: rm.skew_log(ROT_NAN, check=False), ValueError, "R contains NaN", "skew_log-unchecked-nan")
row(rm.skew_log, lambda f: rm.skew_log(ROT, check="no"), TypeError, "check must be True or False",
    "skew_log-check-string")
for n, target, fn in (("log_map", rm.log_map, rm.log_map), ("distance", rm.distance, rm.distance),
                      ("geodesic", rm.geodesic, lambda a, b: rm.geodesic(a, b, 0.5))):
    row(target, lambda f, g=fn: g(ROT, torch.eye(3, dtype=torch.float64)), ValueError, "R0 and R1 must have the same "
        "size n", f"{n}-size-mismatch")
    row(target, lambda f, g=fn: g(ROT, REFL), ValueError, "R0 and R1 lie in different components",
        f"{n}-det-plus-vs-minus")
    row(target, lambda f, g=fn: g(torch.stack([ROT] * 3), torch.stack([ROT_B] * 2)), ValueError,
        "R0 and R1 have batch shapes (3,) and (2,)", f"{n}-batch-mismatch")
    row(target, lambda f, g=fn: g(ROT, W44.double()), ValueError, "R1 must be orthogonal", f"{n}-not-orthogonal")
    row(target, lambda f, g=fn: g(ROT_NAN, ROT), ValueError, "R0 contains NaN", f"{n}-nan")
    row(target, lambda f, g=fn: g(torch.eye(4, dtype=torch.int64), ROT), TypeError, "R0 must have a floating dtype",
        f"{n}-int")
    row(target, lambda f, g=fn: g(torch.eye(4, dtype=torch.float64), HALF_TURN), ValueError, "eigenvalue -1",
        f"{n}-cut-locus")
row(rm.log_map, lambda f: rm.log_map("R0", ROT), TypeError, "R0 must be a torch.Tensor", "log_map-string")
row(rm.geodesic, lambda f: rm.geodesic(ROT, ROT_B, math.nan), ValueError, "t contains NaN", "geodesic-t-nan")
row(rm.geodesic, lambda f: rm.geodesic(ROT, ROT_B, math.inf), ValueError, "t contains NaN or Inf", "geodesic-t-inf")
row(rm.geodesic, lambda f: rm.geodesic(ROT, ROT_B, torch.tensor([0.0, math.inf])), ValueError, "t contains NaN or Inf",
    "geodesic-t-tensor-inf")
row(rm.geodesic, lambda f: rm.geodesic(ROT, ROT_B, "half"), TypeError, "t must be a real number",
    "geodesic-t-string")
row(rm.geodesic, lambda f: rm.geodesic(ROT, ROT_B, None), TypeError, "t must be a real number", "geodesic-t-none")
row(rm.geodesic, lambda f: rm.geodesic(ROT, ROT_B, 0.5j), TypeError, "t must be a real number", "geodesic-t-complex")
row(rm.geodesic, lambda f: rm.geodesic(ROT, ROT_B, torch.tensor([0.5j])), TypeError, "t must hold real numbers",
    "geodesic-t-complex-tensor")
row(rm.geodesic, lambda f: rm.geodesic(ROT, ROT_B, torch.zeros(2, 2)), ValueError, "t must be a number or a 1-d",
    "geodesic-t-2d")
row(rm.exp_map, lambda f: rm.exp_map(ROT, NOT_SKEW), ValueError, "R0^T xi must be skew-symmetric",
    "exp_map-xi-not-tangent")
row(rm.exp_map, lambda f: rm.exp_map(ROT, SKEW[:3, :3]), ValueError, "xi must have the shape", "exp_map-xi-shape")
row(rm.exp_map, lambda f: rm.exp_map(ROT, ROT_NAN), ValueError, "xi contains NaN", "exp_map-xi-nan")
row(rm.exp_map, lambda f: rm.exp_map(ROT, torch.zeros(4, 4, dtype=torch.int64)), TypeError,
    "xi must have a floating dtype", "exp_map-xi-int")
row(rm.exp_map, lambda f: rm.exp_map(torch.stack([ROT] * 3), torch.zeros(2, 4, 4, dtype=torch.float64)), ValueError,
    "R0 and xi have batch shapes", "exp_map-batch-mismatch")
row(rm.exp_map, lambda f: rm.exp_map(W44, SKEW), ValueError, "R0 must be orthogonal", "exp_map-not-orthogonal")

# the Stiefel manifold
row(rm.stiefel_exp, lambda f: rm.stiefel_exp(ST52, torch.zeros(5, 2), metric="euclid"), ValueError,
    "metric must be one of", "stiefel_exp-bad-metric")
row(rm.stiefel_exp, lambda f: rm.stiefel_exp(ST52, torch.ones(5, 2, dtype=torch.float64)), ValueError,
    "U^T Delta must be skew-symmetric", "stiefel_exp-not-tangent")
row(rm.stiefel_exp, lambda f: rm.stiefel_exp(ST52, torch.zeros(5, 3)), ValueError, "Delta must have the shape",
    "stiefel_exp-delta-shape")
row(rm.stiefel_exp, lambda f: rm.stiefel_exp(ST52.T, torch.zeros(2, 5)), ValueError, "U must be tall",
    "stiefel_exp-wide")
row(rm.stiefel_exp, lambda f: rm.stiefel_exp(2 * ST52, torch.zeros(5, 2)), ValueError, "U must be orthogonal",
    "stiefel_exp-not-orthonormal")
row(rm.stiefel_exp, lambda f: rm.stiefel_exp(ST52, torch.full((5, 2), math.nan)), ValueError, "Delta contains NaN",
    "stiefel_exp-nan")
row(rm.stiefel_exp, lambda f: rm.stiefel_exp(torch.stack([ST52] * 3), torch.zeros(2, 5, 2, dtype=torch.float64)),
    ValueError, "U and Delta have batch shapes", "stiefel_exp-batch-mismatch")
row(rm.stiefel_log, lambda f: rm.stiefel_log(ST52, torch.eye(5, 3, dtype=torch.float64)), ValueError,
    "U0 and U1 must have the same shape", "stiefel_log-shape-mismatch")
row(rm.stiefel_log, lambda f: rm.stiefel_log(ST52[None], ST52_B[None]), ValueError, "U0 and U1 must be 2-d",
    "stiefel_log-batched")
row(rm.stiefel_log, lambda f: rm.stiefel_log(ST52, ST52_B, tol=-1.0), ValueError, "tol", "stiefel_log-negative-tol")
row(rm.stiefel_log, lambda f: rm.stiefel_log(ST52, ST52_B, tol=math.inf), ValueError, "tol must be",
    "stiefel_log-infinite-tol")
row(rm.stiefel_log, lambda f: rm.stiefel_log(ST52, ST52_B, tol="1e-9"), TypeError, "tol must be a real number",
    "stiefel_log-string-tol")
row(rm.stiefel_log, lambda f: rm.stiefel_log(ST52, ST52_B, max_iter=-1), ValueError, "max_iter",
    "stiefel_log-negative-max-iter")
row(rm.stiefel_log, lambda f: rm.stiefel_log(ST52, ST52_B, return_info="yes"), TypeError,
    "return_info must be True or False", "stiefel_log-return-info-string")
row(rm.stiefel_log, lambda f: rm.stiefel_log(ROT, REFL), ValueError, "different components",
    "stiefel_log-square-det-plus-vs-minus")
row(rm.stiefel_log, lambda f: rm.stiefel_log(ST52, 2 * ST52_B), ValueError, "U1 must be orthogonal",
    "stiefel_log-not-orthonormal")
row(rm.stiefel_log, lambda f: rm.stiefel_log(torch.eye(4, 2, dtype=torch.float64), -torch.eye(4, 2,
                                                                                             dtype=torch.float64)),
    ValueError, "too far apart", "stiefel_log-antipodal")
row(rm.stiefel_geodesic, lambda f: rm.stiefel_geodesic(ST52, ST52_B, math.nan), ValueError, "t contains NaN",
    "stiefel_geodesic-t-nan")
row(rm.stiefel_geodesic, lambda f: rm.stiefel_geodesic(ST52, ST52_B, "x"), TypeError, "t must be a real number",
    "stiefel_geodesic-t-string")
row(rm.stiefel_geodesic, lambda f: rm.stiefel_geodesic(ST52, ST52_B, 0.5, foo=1), TypeError, "'foo'",
    "stiefel_geodesic-unknown-option")
row(rm.stiefel_geodesic, lambda f: rm.stiefel_geodesic(2 * ST52, ST52_B, 0.5), ValueError, "U0 must be orthogonal",
    "stiefel_geodesic-not-orthonormal")

# the Cayley chart
row(rm.cayley, lambda f: rm.cayley(NOT_SKEW), ValueError, "A must be skew-symmetric", "cayley-not-skew")
row(rm.cayley, lambda f: rm.cayley(SKEW[:, :3]), ValueError, "A must be square", "cayley-not-square")
row(rm.cayley, lambda f: rm.cayley(ROT_NAN), ValueError, "A contains NaN", "cayley-nan")
row(rm.cayley, lambda f: rm.cayley(torch.zeros(3, 3, dtype=torch.int64)), TypeError, "A must have a floating dtype",
    "cayley-int")
row(rm.cayley_inverse, lambda f: rm.cayley_inverse(REFL), ValueError, "R has determinant -1",
    "cayley_inverse-reflection")
row(rm.cayley_inverse, lambda f: rm.cayley_inverse(HALF_TURN), ValueError, "R has the eigenvalue -1",
    "cayley_inverse-cut-locus")
row(rm.cayley_inverse, lambda f: rm.cayley_inverse(W44), ValueError, "R must be orthogonal",
    "cayley_inverse-not-orthogonal")

# means
for fn in (rm.karcher_mean, rm.chordal_mean):
    n = fn.__name__
    row(fn, lambda f, g=fn: g([]), ValueError, "points is empty", f"{n}-no-points")
    row(fn, lambda f, g=fn: g(torch.zeros(0, 4, 4)), ValueError, "points is empty", f"{n}-empty-tensor")
    row(fn, lambda f, g=fn: g([ROT, torch.eye(3, dtype=torch.float64)]), ValueError, "points[1] has shape (3, 3)",
        f"{n}-shape-mismatch")
    row(fn, lambda f, g=fn: g([ROT, W44.double()]), ValueError, "points[1] must be orthogonal", f"{n}-not-orthogonal")
    row(fn, lambda f, g=fn: g([ROT, ROT_NAN]), ValueError, "points[1] contains NaN", f"{n}-nan")
    row(fn, lambda f, g=fn: g([torch.eye(4, dtype=torch.int64)] * 2), TypeError, "points[0] must have a floating",
        f"{n}-int")
    row(fn, lambda f, g=fn: g([ROT.float(), ROT_B]), TypeError, "points[1] is torch.float64 but points[0] is "
        "torch.float32", f"{n}-mixed-dtypes")
    row(fn, lambda f, g=fn: g(ROT), ValueError, "points must be a sequence of matrices", f"{n}-one-matrix")
    row(fn, lambda f, g=fn: g("points"), TypeError, "points must be a torch.Tensor", f"{n}-string")
    row(fn, lambda f, g=fn: g([ROT, ROT_B], weights=[1.0]), ValueError, "weights must have one entry per point",
        f"{n}-weights-length")
    row(fn, lambda f, g=fn: g([ROT, ROT_B], weights=[1.0, -1.0]), ValueError, "weights must be >= 0",
        f"{n}-negative-weight")
    row(fn, lambda f, g=fn: g([ROT, ROT_B], weights=[0.0, 0.0]), ValueError, "weights must not all be zero",
        f"{n}-zero-weights")
    row(fn, lambda f, g=fn: g([ROT, ROT_B], weights=[math.nan, 1.0]), ValueError, "weights contains NaN",
        f"{n}-nan-weight")
    row(fn, lambda f, g=fn: g([ROT, ROT_B], weights=[[0.5, 0.5]]), ValueError, "weights must be 1-dimensional",
        f"{n}-2d-weights")
row(rm.karcher_mean, lambda f: rm.karcher_mean([ROT, REFL]), ValueError, "points lie in different components",
    "karcher_mean-det-plus-and-minus")
row(rm.karcher_mean, lambda f: rm.karcher_mean([ST52, ST52_B]), ValueError, "points must be square",
    "karcher_mean-stiefel")
row(rm.karcher_mean, lambda f: rm.karcher_mean([torch.eye(4, dtype=torch.float64), HALF_TURN]), ValueError,
    "eigenvalue -1", "karcher_mean-cut-locus")
row(rm.karcher_mean, lambda f: rm.karcher_mean([ROT, ROT_B], tol=-1.0), ValueError, "tol", "karcher_mean-negative-tol")
row(rm.karcher_mean, lambda f: rm.karcher_mean([ROT, ROT_B], tol="small"), TypeError, "tol must be a real number",
    "karcher_mean-string-tol")
row(rm.karcher_mean, lambda f: rm.karcher_mean([ROT, ROT_B], max_iter=1.5), ValueError, "max_iter",
    "karcher_mean-float-max-iter")
row(rm.karcher_mean, lambda f: rm.karcher_mean([ROT, ROT_B], init=REFL), ValueError,
    "init lies in the other component", "karcher_mean-init-det-minus")
row(rm.karcher_mean, lambda f: rm.karcher_mean([ROT, ROT_B], init=torch.eye(3, dtype=torch.float64)), ValueError,
    "init must be 4 x 4", "karcher_mean-init-shape")
row(rm.karcher_mean, lambda f: rm.karcher_mean([ROT, ROT_B], init=W44.double()), ValueError,
    "init must be orthogonal", "karcher_mean-init-not-orthogonal")
row(rm.karcher_mean, lambda f: rm.karcher_mean([ROT, ROT_B], warn="no"), TypeError, "warn must be True or False",
    "karcher_mean-warn-string")
row(rm.chordal_mean, lambda f: rm.chordal_mean([ROT, ROT_B], group="SE"), ValueError, "group must be one of",
    "chordal_mean-bad-group")
row(rm.chordal_mean, lambda f: rm.chordal_mean([ST52, ST52_B], group="SO"), ValueError,
    "group='SO' needs square matrices", "chordal_mean-SO-stiefel")
row(rm.chordal_mean, lambda f: rm.chordal_mean([ST52.T, ST52_B.T]), ValueError, "points must be tall",
    "chordal_mean-wide")

# merging
for fn in (rm.task_arithmetic, rm.ties_merge, rm.orthomerge):
    n = fn.__name__
    row(fn, lambda f, g=fn: g(W44, []), ValueError, "experts must be a non-empty sequence", f"{n}-no-experts")
    row(fn, lambda f, g=fn: g(W44, "experts"), ValueError, "experts must be a non-empty sequence", f"{n}-string")
    row(fn, lambda f, g=fn: g(W44, [W44[:, :3]]), ValueError, "experts[0] has shape (4, 3) but base has (4, 4)",
        f"{n}-shape-mismatch")
    row(fn, lambda f, g=fn: g(W44, [W_EXP[0], X_NAN[:4]]), ValueError, "experts[1] contains NaN", f"{n}-nan-expert")
    row(fn, lambda f, g=fn: g(X_INF[:4], W_EXP), ValueError, "base contains NaN or Inf", f"{n}-inf-base")
    row(fn, lambda f, g=fn: g(torch.zeros(4, 4, dtype=torch.int64), W_EXP), TypeError, "base must have a floating",
        f"{n}-int-base")
    row(fn, lambda f, g=fn: g(W44, W44), ValueError, "experts given as one tensor must stack them",
        f"{n}-unstacked-tensor")
    row(fn, lambda f, g=fn: g(W44, W_EXP, scale=-1.0), ValueError, "scale", f"{n}-negative-scale")
    row(fn, lambda f, g=fn: g(W44, W_EXP, scale=math.nan), ValueError, "scale", f"{n}-nan-scale")
row(rm.task_arithmetic, lambda f: rm.task_arithmetic(torch.zeros(2), [torch.full((2,), 3e38)] * 2, scale=1.0),
    ValueError, "the merged tensor overflows float32", "task_arithmetic-float32-overflow")
row(rm.ties_merge, lambda f: rm.ties_merge(torch.zeros(2), [torch.full((2,), 3e38)], density=1.0, scale=2.0),
    ValueError, "the merged tensor overflows float32", "ties_merge-float32-overflow")
row(rm.task_arithmetic, lambda f: rm.task_arithmetic(torch.tensor(1.0), torch.tensor(2.0)), ValueError,
    "experts given as one tensor", "task_arithmetic-0d-experts")
for d in (0.0, 1.5, math.nan):
    row(rm.ties_merge, lambda f, d=d: rm.ties_merge(W44, W_EXP, density=d), ValueError, "density",
        f"ties_merge-density-{d}")
row(rm.norm_corrected_average, lambda f: rm.norm_corrected_average([]), ValueError,
    "generators must be a non-empty sequence", "norm_corrected_average-empty")
row(rm.norm_corrected_average, lambda f: rm.norm_corrected_average("AB"), ValueError,
    "generators must be a non-empty sequence", "norm_corrected_average-string")
row(rm.norm_corrected_average, lambda f: rm.norm_corrected_average([SKEW], magnitude="min"), ValueError,
    "magnitude must be one of", "norm_corrected_average-bad-magnitude")
row(rm.norm_corrected_average, lambda f: rm.norm_corrected_average([SKEW], direction_weight="max"), ValueError,
    "direction_weight must be one of", "norm_corrected_average-bad-direction-weight")
row(rm.norm_corrected_average, lambda f: rm.norm_corrected_average([SKEW, SKEW[:3, :3]]), ValueError,
    "generators[1] has shape", "norm_corrected_average-shape-mismatch")
row(rm.norm_corrected_average, lambda f: rm.norm_corrected_average([SKEW, ROT_NAN]), ValueError,
    "generators[1] contains NaN", "norm_corrected_average-nan")
row(rm.norm_corrected_average, lambda f: rm.norm_corrected_average([torch.eye(2, dtype=torch.int64)]), TypeError,
    "generators[0] must have a floating", "norm_corrected_average-int")
row(rm.decouple_orthogonal, lambda f: rm.decouple_orthogonal(W44, W_EXP[0], side="left"), ValueError,
    "side must be one of", "decouple_orthogonal-bad-side")
row(rm.decouple_orthogonal, lambda f: rm.decouple_orthogonal(W44, W44[:, :3]), ValueError,
    "expert has shape (4, 3) but base has (4, 4)", "decouple_orthogonal-shape-mismatch")
row(rm.decouple_orthogonal, lambda f: rm.decouple_orthogonal(W44[0], W44[0]), ValueError,
    "base must be 2-dimensional", "decouple_orthogonal-1d")
row(rm.decouple_orthogonal, lambda f: rm.decouple_orthogonal(W44, X_NAN[:4]), ValueError, "expert contains NaN",
    "decouple_orthogonal-nan")
row(rm.decouple_orthogonal, lambda f: rm.decouple_orthogonal(W44, W_EXP[0], target=W44[:3, :3]), ValueError,
    "target has shape (3, 3) but base has (4, 4)", "decouple_orthogonal-target-shape")
row(rm.decouple_orthogonal, lambda f: rm.decouple_orthogonal(torch.eye(4, dtype=torch.int64), W44), TypeError,
    "base must have a floating", "decouple_orthogonal-int")
row(rm.orthomerge, lambda f: rm.orthomerge(W44[0], [W44[0]]), ValueError, "base must be a 2-d",
    "orthomerge-1d")
row(rm.orthomerge, lambda f: rm.orthomerge(W44, W_EXP, residual="mean"), ValueError, "residual must be one of",
    "orthomerge-bad-residual")
row(rm.orthomerge, lambda f: rm.orthomerge(W44, W_EXP, rotation_fit="rows"), ValueError,
    "rotation_fit must be one of", "orthomerge-bad-rotation-fit")
row(rm.orthomerge, lambda f: rm.orthomerge(W44, W_EXP, side="both"), ValueError, "side must be one of",
    "orthomerge-bad-side")
row(rm.orthomerge, lambda f: rm.orthomerge(W44, W_EXP, magnitude="min"), ValueError, "magnitude must be one of",
    "orthomerge-bad-magnitude")
row(rm.orthomerge, lambda f: rm.orthomerge(W44, W_EXP, residual="ties", density=0.0), ValueError, "density",
    "orthomerge-ties-zero-density")
row(rm.orthomerge, lambda f: rm.orthomerge(W44, W_EXP, density=3.0), ValueError, "density",
    "orthomerge-unused-density-out-of-range")
row(rm.orthomerge, lambda f: rm.orthomerge(torch.eye(4), [HALF_TURN.float()]), ValueError, "angle near pi",
    "orthomerge-half-turn-expert")
MLP_WIDE = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
row(rm.merge_models, lambda f: rm.merge_models(_mlp(), []), ValueError, "experts must be a non-empty sequence",
    "merge_models-no-experts")
row(rm.merge_models, lambda f: rm.merge_models(_mlp(), _mlp()), ValueError, "experts must be a non-empty sequence",
    "merge_models-one-module-not-a-list")
row(rm.merge_models, lambda f: rm.merge_models(_mlp(), [_mlp()], method="average"), ValueError,
    "method must be one of", "merge_models-bad-method")
row(rm.merge_models, lambda f: rm.merge_models(_mlp(), [MLP_WIDE]), ValueError, "base and experts[0] do not match",
    "merge_models-architecture-mismatch")
row(rm.merge_models, lambda f: rm.merge_models(_mlp(), [nn.Sequential(nn.Linear(3, 4))]), ValueError,
    "keys only in base", "merge_models-missing-layers")
row(rm.merge_models, lambda f: rm.merge_models(_mlp(), [_mlp()], method="task_arithmetic", density=0.5), TypeError,
    "unexpected options ['density']", "merge_models-option-of-another-method")
row(rm.merge_models, lambda f: rm.merge_models(_mlp(), [_mlp()], magnitude="min"), ValueError,
    "magnitude must be one of", "merge_models-bad-option-value")
row(rm.merge_models, lambda f: rm.merge_models(_mlp(), [_mlp()], residual="mean"), ValueError,
    "residual must be one of", "merge_models-bad-residual")
row(rm.merge_models, lambda f: rm.merge_models(_mlp(), [_mlp()], method="ties", density=3.0), ValueError,
    "density", "merge_models-ties-density")
row(rm.merge_models, lambda f: rm.merge_models(_mlp(), [_mlp()], scale=-1.0), ValueError, "scale",
    "merge_models-negative-scale")
row(rm.merge_models, lambda f: rm.merge_models(_mlp().state_dict(), [_mlp()]), TypeError,
    "base must be an nn.Module", "merge_models-base-state-dict")
row(rm.merge_models, lambda f: rm.merge_models(_mlp(), ["expert"]), TypeError,
    "experts[0] must be an nn.Module or a state_dict", "merge_models-expert-string")
row(rm.merge_models, lambda f: rm.merge_models(_mlp(), [{k: "x" for k in _mlp().state_dict()}]), TypeError,
    "must be a torch.Tensor", "merge_models-state-dict-of-strings")
row(rm.merge_models, lambda f: rm.merge_models(_mlp(), [_mlp(), _nan_mlp()]), ValueError,
    "experts[1]['0.weight'] contains NaN", "merge_models-nan-expert")
row(rm.merge_models, lambda f: rm.merge_models(_mlp(), [{k: v.long() for k, v in _mlp().state_dict().items()}]),
    TypeError, "experts[0]['0.weight'] must be floating-point", "merge_models-integer-expert")

# re-basin
row(rm.weight_matching, lambda f: rm.weight_matching(_mlp(), MLP_WIDE), ValueError,
    "must have the same architecture: linear layer 0 has weight shape (4, 3) in model_a vs (5, 3)",
    "weight_matching-width-mismatch")
row(rm.weight_matching, lambda f: rm.weight_matching(_mlp(), _mlp(bias=False)), ValueError,
    "linear layer 0 has a bias only in model_a", "weight_matching-bias-mismatch")
row(rm.weight_matching, lambda f: rm.weight_matching(_mlp(between=nn.LayerNorm(4)), _mlp(between=nn.BatchNorm1d(4))),
    ValueError, "LayerNorm(weight, bias) in model_a vs BatchNorm1d(weight, bias) in model_b",
    "weight_matching-layernorm-vs-batchnorm")
row(rm.weight_matching, lambda f: rm.weight_matching(_mlp(between=nn.LayerNorm(4)),
                                                     _mlp(between=nn.LayerNorm(4, elementwise_affine=False))),
    ValueError, "LayerNorm(no parameters) in model_b", "weight_matching-affine-mismatch")
row(rm.weight_matching, lambda f: rm.weight_matching(_mlp(between=nn.LayerNorm(4)), _mlp()), ValueError,
    "are LayerNorm(weight, bias) in model_a vs none in model_b", "weight_matching-extra-layernorm")
row(rm.weight_matching, lambda f: rm.weight_matching(_mlp(), nn.Sequential(nn.Linear(3, 4), nn.ReLU(),
                                                                         nn.Linear(4, 4), nn.ReLU(),
                                                                         nn.Linear(4, 2))),
    ValueError, "2 linear layers in model_a vs 3 in model_b", "weight_matching-depth-mismatch")
row(rm.weight_matching, lambda f: rm.weight_matching(nn.Linear(3, 4), _mlp()), TypeError,
    "model_a must be an nn.Sequential", "weight_matching-not-sequential")
row(rm.weight_matching, lambda f: rm.weight_matching(nn.Sequential(nn.Linear(3, 4)), nn.Sequential(nn.Linear(3, 4))),
    ValueError, "model_a needs at least two nn.Linear", "weight_matching-no-hidden-layer")
row(rm.weight_matching, lambda f: rm.weight_matching(_mlp(between=nn.Softmax(-1)), _mlp()), TypeError,
    "Softmax between linear layers is not known to act unit by unit", "weight_matching-softmax-between")
row(rm.weight_matching, lambda f: rm.weight_matching(_mlp(), _nan_mlp()), ValueError,
    "model_b has NaN or Inf values in 0.weight", "weight_matching-nan")
row(rm.weight_matching, lambda f: rm.weight_matching(_mlp(), _mlp(), max_sweeps=0), ValueError, "max_sweeps",
    "weight_matching-zero-sweeps")
row(rm.weight_matching, lambda f: rm.weight_matching(_mlp(), _mlp(), seed=1.5), TypeError, "seed must be an integer",
    "weight_matching-float-seed")
row(rm.weight_matching, lambda f: rm.weight_matching(_mlp(), _mlp(), seed="x"), TypeError, "seed must be an integer",
    "weight_matching-string-seed")
row(rm.permute_hidden_units, lambda f: rm.permute_hidden_units(_mlp(), []), ValueError,
    "permutations must hold one index tensor per hidden layer (1), got 0", "permute_hidden_units-count")
row(rm.permute_hidden_units, lambda f: rm.permute_hidden_units(_mlp(), [torch.tensor([0, 0, 1, 2])]), ValueError,
    "permutations[0] must be a permutation of range(4)", "permute_hidden_units-duplicate-index")
row(rm.permute_hidden_units, lambda f: rm.permute_hidden_units(_mlp(), [torch.tensor([0.5, 1.0, 2.0, 3.0])]),
    TypeError, "permutations[0] must hold integer indices", "permute_hidden_units-float-indices")
row(rm.permute_hidden_units, lambda f: rm.permute_hidden_units(_mlp(), [np.array([0.0, 1.0, 2.0, 3.0])]),
    TypeError, "permutations[0] must hold integer indices", "permute_hidden_units-float-numpy")
row(rm.permute_hidden_units, lambda f: rm.permute_hidden_units(_mlp(), [torch.tensor([True, False, True, False])]),
    TypeError, "permutations[0] must hold integer indices", "permute_hidden_units-bool-mask")
row(rm.permute_hidden_units, lambda f: rm.permute_hidden_units(_mlp(), ["0123"]), TypeError,
    "permutations[0] must be a tensor or list", "permute_hidden_units-string")
row(rm.permute_hidden_units, lambda f: rm.permute_hidden_units(_mlp(), torch.arange(4)), TypeError,
    "permutations must be a list of index tensors", "permute_hidden_units-bare-tensor")
row(rm.permute_hidden_units, lambda f: rm.permute_hidden_units(nn.Linear(3, 4), [torch.arange(4)]), TypeError,
    "model must be an nn.Sequential", "permute_hidden_units-not-sequential")

# orthogonal adapters
OAB = rm.orthogonal_adapter_bases
row(OAB, lambda f: OAB(4, 3, num_adapters=2), ValueError, "the ranks add up to 6 > in_features = 4",
    "orthogonal_adapter_bases-too-many")
row(OAB, lambda f: OAB(4, 2), ValueError, "num_adapters is needed", "orthogonal_adapter_bases-no-count")
row(OAB, lambda f: OAB(4, 0, num_adapters=2), ValueError, "ranks[0] must be a positive integer",
    "orthogonal_adapter_bases-zero-rank")
row(OAB, lambda f: OAB(4, []), ValueError, "ranks must not be empty", "orthogonal_adapter_bases-no-ranks")
row(OAB, lambda f: OAB(4, 2.0, num_adapters=2), TypeError, "ranks must be a positive integer or a sequence",
    "orthogonal_adapter_bases-float-rank")
row(OAB, lambda f: OAB(4, "2", num_adapters=2), TypeError, "ranks must be a positive integer or a sequence",
    "orthogonal_adapter_bases-string-rank")
row(OAB, lambda f: OAB(4, [1, 1], num_adapters=3), ValueError, "num_adapters=3 but 2 ranks",
    "orthogonal_adapter_bases-count-mismatch")
row(OAB, lambda f: OAB(0, 1, num_adapters=1), ValueError, "in_features must be a positive integer",
    "orthogonal_adapter_bases-zero-width")
row(OAB, lambda f: OAB(4, 1, num_adapters=2, dtype=torch.int64), TypeError, "dtype must be a floating",
    "orthogonal_adapter_bases-int-dtype")
row(OAB, lambda f: OAB(4, 1, num_adapters=2, device="cuda"), ValueError, "no CUDA GPU",
    "orthogonal_adapter_bases-cuda-without-gpu", cuda=True)
row(OAB, lambda f: OAB(4, 1, num_adapters=2, device="gpu"), ValueError, "unknown device",
    "orthogonal_adapter_bases-bad-device")
row(OAB, lambda f: OAB(4, 1, num_adapters=2, generator=0), TypeError, "generator must be a torch.Generator",
    "orthogonal_adapter_bases-int-generator")
AI = rm.adapter_interference
row(AI, lambda f: AI([]), ValueError, "deltas must be a non-empty sequence", "adapter_interference-empty")
row(AI, lambda f: AI("W"), ValueError, "deltas must be a non-empty sequence", "adapter_interference-string")
row(AI, lambda f: AI([W44], side="both"), ValueError, "side must be one of", "adapter_interference-bad-side")
row(AI, lambda f: AI([W44, W44[:, :3]]), ValueError, "deltas[1] has shape (4, 3)", "adapter_interference-shapes")
row(AI, lambda f: AI([W44, X_NAN[:4]]), ValueError, "deltas[1] contains NaN", "adapter_interference-nan")
row(AI, lambda f: AI([W44[0]]), ValueError, "deltas[0] must be 2-dimensional", "adapter_interference-1d")
row(AI, lambda f: AI(W44), ValueError, "deltas given as one tensor must stack", "adapter_interference-one-matrix")
row(AI, lambda f: AI([torch.eye(2, dtype=torch.int64)]), TypeError, "deltas[0] must have a floating",
    "adapter_interference-int")
row(AI, lambda f: AI([W44], normalized="yes"), TypeError, "normalized must be True or False",
    "adapter_interference-normalized-string")

# the permutation solver
row(cf.linear_assignment, lambda f: cf.linear_assignment(W44[0]), ValueError, "scores must be 2-dimensional",
    "linear_assignment-1d")
row(cf.linear_assignment, lambda f: cf.linear_assignment(X_NAN[:4]), ValueError, "scores contains NaN",
    "linear_assignment-nan")
row(cf.linear_assignment, lambda f: cf.linear_assignment(X_INF[:4]), ValueError, "scores contains NaN or Inf",
    "linear_assignment-inf")
row(cf.linear_assignment, lambda f: cf.linear_assignment(torch.eye(3, dtype=torch.int64)), TypeError,
    "scores must have a floating dtype", "linear_assignment-int")
row(cf.linear_assignment, lambda f: cf.linear_assignment(W44.to(torch.complex64)), TypeError,
    "scores must have a floating dtype", "linear_assignment-complex")
row(cf.linear_assignment, lambda f: cf.linear_assignment("scores"), TypeError, "scores must be a torch.Tensor",
    "linear_assignment-string")
row(cf.linear_assignment, lambda f: cf.linear_assignment(W44, signed="yes"), TypeError,
    "signed must be True or False", "linear_assignment-signed-string")
row(cf.solve_permutation, lambda f: cf.solve_permutation("moments"), TypeError,
    "m must be the PairedMoments", "solve_permutation-not-moments")
row(cf.solve_permutation, lambda f: cf.solve_permutation(_perm_moments(second_moments=("x", "y")), score="cosine"),
    ValueError, "score must be one of", "solve_permutation-bad-score")
row(cf.solve_permutation, lambda f: cf.solve_permutation(_perm_moments(second_moments=("x", "y")), signed=1),
    TypeError, "signed must be True or False", "solve_permutation-signed-int")
row(cf.solve_permutation, lambda f: cf.solve_permutation(_perm_moments()), ValueError,
    "m lacks the Gram of y", "solve_permutation-missing-gram")
row(cf.solve_permutation, lambda f: cf.solve_permutation(cf.accumulate_moments(
    torch.ones(8, 3, dtype=torch.float64), torch.ones(8, 3, dtype=torch.float64), second_moments=("x", "y"))),
    ValueError, "the matching scores are all zero", "solve_permutation-constant-units")
row(cf.fit_closed_form, lambda f: fcf(X, Y, kind="permutation", score="cosine"), ValueError, "score must be one of",
    "fcf-permutation-bad-score")
row(cf.fit_closed_form, lambda f: fcf(X, Y, kind="permutation", signed="yes"), TypeError,
    "signed must be True or False", "fcf-permutation-signed-string")
row(cf.fit_closed_form, lambda f: fcf(X_NAN, Y, kind="permutation"), ValueError, "X contains NaN",
    "fcf-permutation-nan")


# ----------------------------------------------------------------------------------------------- rows: the CLI
row("cli:fit", lambda f: cli("fit", f.p("new.npy"), f.p("old.npy"), "--out", f.p("o.pt"), "--kind", "affine",
                             "--solver", "trained", "--lr", "1e6", "--epochs", "20", "--quiet"), CLIFailed,
    "training diverged", "cli-fit-lr-1e6-diverges")
row("cli:fit", lambda f: cli("fit", f.p("new30.npy"), f.p("old30.npy"), "--out", f.p("o.pt"), "--kind", "lambda",
                             "--epochs", "2", "--quiet"), CLIFailed, "overflow float32", "cli-fit-data-1e30-trained")
row("cli:fit", lambda f: cli("fit", f.p("new.npy"), f.p("old.npy"), "--out", f.p("o.pt"), "--labels",
                             f.p("two_columns.csv"), "--quiet"), CLIFailed, "several columns",
    "cli-fit-two-column-labels")
row("cli:fit", lambda f: cli("fit", f.p("new.npy"), f.p("old.npy"), "--out", f.p("o.pt"), "--labels",
                             f.p("words.txt"), "--quiet"), CLIFailed, "one integer per line",
    "cli-fit-word-labels")
row("cli:fit", lambda f: cli("fit", f.p("short.npy"), f.p("old.npy"), "--out", f.p("o.pt")), CLIFailed,
    "same number of rows", "cli-fit-row-mismatch")
row("cli:fit", lambda f: cli("fit", f.p("ints.npy"), f.p("old.npy"), "--out", f.p("o.pt")), CLIFailed,
    "floating-point", "cli-fit-int-features")
row("cli:fit", lambda f: cli("fit", f.p("new.npy"), f.p("old.npy"), "--out", f.p("o.pt"), "--device", "cuda"),
    CLIFailed, "no CUDA GPU", "cli-fit-cuda-without-gpu", cuda=True)
row("cli:fit", lambda f: cli("fit", f.p("new.npy"), f.p("old.npy"), "--out", f.p("o.pt"), "--lr", "-1"), CLIUsage,
    "--lr", "cli-fit-negative-lr")
row("cli:fit", lambda f: cli("fit", f.p("new.npy"), f.p("old.npy"), "--out", f.p("o.pt"), "--epochs", "0"),
    CLIUsage, "--epochs", "cli-fit-zero-epochs")
row("cli:fit", lambda f: cli("fit", f.p("new.npy"), f.p("old.npy"), "--out", f.p("o.pt"), "--batch-size", "1.5"),
    CLIUsage, "--batch-size", "cli-fit-float-batch")
row("cli:fit", lambda f: cli("fit", f.p("new.npy"), f.p("old.npy"), "--out", f.p("o.pt"), "--lam", "-1"), CLIUsage,
    "--lam", "cli-fit-negative-lam")
row("cli:eval", lambda f: cli("eval", f.p("empty.pt"), *_q(f)), CLIFailed, "empty", "cli-eval-empty-map-file")
row("cli:eval", lambda f: cli("eval", f.p("truncated.pt"), *_q(f)), CLIFailed, "truncated", "cli-eval-truncated-map")
row("cli:eval", lambda f: cli("eval", f.p("pickled_module.pt"), *_q(f)), CLIFailed, "pickled", "cli-eval-pickled")
row("cli:eval", lambda f: cli("eval", f.p("nope.pt"), *_q(f)), CLIFailed, "not found", "cli-eval-missing-map")
row("cli:eval", lambda f: cli("eval", f.p("map.pt"), *_q(f)[:-1], f.p("two_columns.csv")), CLIFailed,
    "several columns", "cli-eval-two-column-labels")
row("cli:eval", lambda f: cli("eval", f.p("map.pt"), "--query", f.p("narrow.npy"), *_q(f)[2:]), CLIFailed, "columns",
    "cli-eval-width")
row("cli:eval", lambda f: cli("eval", f.p("map.pt"), *_q(f), "--topk", "0"), CLIUsage, "--topk", "cli-eval-zero-topk")
row("cli:sweep", lambda f: cli("sweep", f.p("new.npy"), f.p("old.npy"), "--out", f.p("sw"), "--epochs", "20",
                               "--lr", "1e6", "--lams", "1", "--quiet"), CLIFailed, "training diverged",
    "cli-sweep-lr-1e6-diverges")
row("cli:sweep", lambda f: cli("sweep", f.p("new30.npy"), f.p("old30.npy"), "--out", f.p("sw"), "--epochs", "2",
                               "--quiet"), CLIFailed, "overflow float32", "cli-sweep-data-1e30")
row("cli:sweep", lambda f: cli("sweep", f.p("new.npy"), f.p("old.npy"), "--out", f.p("sw"), "--lams", "x"),
    CLIUsage, "--lams", "cli-sweep-bad-lams")
row("cli:sweep", lambda f: cli("sweep", f.p("new.npy"), f.p("old.npy"), "--out", f.p("sw"), "--val-fraction",
                               "0.99"), CLIFailed, "--val-fraction", "cli-sweep-val-fraction")
row("cli:demo", lambda f: cli("demo", "--device", "gpu", "--out", f.p("demo")), CLIFailed, "unknown device",
    "cli-demo-bad-device")
row("cli:demo", lambda f: cli("demo", "--out", f.p("a_file/sub")), CLIFailed, "cannot write", "cli-demo-unwritable")
row("cli:transfer-demo", lambda f: cli("transfer-demo", "--out", f.p("a_file/sub")), CLIFailed, "a_file",
    "cli-transfer-demo-unwritable")
row("cli:transfer-demo", lambda f: cli("transfer-demo", "--seed", "-3"), CLIUsage, "--seed",
    "cli-transfer-demo-negative-seed")
row("cli:compat-bench", lambda f: cli("compat-bench", "--quick", "--out", f.p("a_file/sub")), CLIFailed,
    "cannot write", "cli-compat-bench-unwritable")
row("cli:compat-bench", lambda f: cli("compat-bench", "--quick", "--seed", "-3"), CLIUsage, "--seed",
    "cli-compat-bench-negative-seed")
row("cli:compat-bench", lambda f: cli("compat-bench", "--dataset", "fashion-mnist", "--data-dir", f.p("nowhere"),
                                      "--out", f.p("cb")), CLIFailed, "not found", "cli-compat-bench-no-fashion-mnist")
row("cli:compat-bench", lambda f: cli("compat-bench", "--quick", "--device", "gpu", "--out", f.p("cb")), CLIFailed,
    "unknown device", "cli-compat-bench-bad-device")


# ----------------------------------------------------------------------------------------------- the test
def _param(r: Row):
    marks = []
    if r.pending:
        marks.append(pytest.mark.xfail(strict=True, reason=f"pending branch {r.pending}"))
    if r.needs_no_cuda and not NO_CUDA:
        marks.append(pytest.mark.skip(reason="a CUDA GPU is present: the device is not bad input here"))
    return pytest.param(r, id=r.id, marks=marks)


@pytest.mark.parametrize("r", [_param(r) for r in ROWS])
def test_bad_input_gives_one_clear_line(r: Row, f):
    with pytest.raises(r.exc) as info:
        r.call(f)
    msg = str(info.value).strip()
    assert r.phrase.lower() in msg.lower(), f"{type(info.value).__name__}: {msg}"
    assert msg and "\n" not in msg, f"not one line: {msg!r}"
    assert "Traceback" not in msg and "weights_only=False" not in msg, msg


# ----------------------------------------------------------------------------------------------- coverage
PUBLIC_MODULES = ("relaxedortho", "relaxedortho.closed_form", "relaxedortho.metrics", "relaxedortho.similarity",
                  "relaxedortho.penalties", "relaxedortho.linalg", "relaxedortho.training", "relaxedortho.transfer",
                  "relaxedortho.losses", "relaxedortho.riemannian")

#: Public callables that take no input of their own to validate, with the reason.
EXEMPT = {
    "relaxedortho.ConvergenceWarning": "a warning class, issued by the library's iterative solvers",
    "relaxedortho.training.NonFiniteLossError": "an exception class, raised by the library",
    "relaxedortho.training.TrainingDivergedError": "an exception class, raised by the library",
    "relaxedortho.training.TrainHistory": "a record returned by the trainers",
    "relaxedortho.training.SweepTable": "a record returned by lambda_sweep (plot_tradeoff's row checks its use)",
    "relaxedortho.closed_form.ClosedFormSolution": "a record returned by the solvers",
    "relaxedortho.closed_form.PairedMoments": "a record returned by accumulate_moments (the solvers' rows check "
                                              "what they accept)",
    "relaxedortho.riemannian.KarcherMean": "a record returned by karcher_mean",
    "relaxedortho.riemannian.WeightMatching": "a record returned by weight_matching",
}


def public_callables() -> dict[str, Any]:
    """``{qualified name: object}`` for every public callable of :data:`PUBLIC_MODULES` (its ``__all__``, or the
    public names it defines when it has none), each object once."""
    out: dict[str, Any] = {}
    seen: set[int] = set()
    for modname in PUBLIC_MODULES:
        mod = importlib.import_module(modname)
        names = getattr(mod, "__all__", None)
        if names is None:
            names = [n for n, o in vars(mod).items()
                     if not n.startswith("_") and getattr(o, "__module__", None) == modname]
        for n in names:
            obj = getattr(mod, n)
            if inspect.ismodule(obj) or not callable(obj) or id(obj) in seen:
                continue
            seen.add(id(obj))
            out[f"{modname}.{n}"] = obj
    return out


def cli_subcommands() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
    return {f"cli:{name}" for name in sub.choices}


def _resolve(qualified: str) -> Any:
    module, _, name = qualified.rpartition(".")
    return getattr(importlib.import_module(module), name, None)


def test_every_public_entry_point_has_a_row():
    public = public_callables()
    exempt = {id(_resolve(name)) for name in EXEMPT}
    covered = {id(r.target) for r in ROWS if not isinstance(r.target, str)}
    missing = sorted(name for name, obj in public.items() if id(obj) not in covered | exempt)
    assert not missing, f"public callables without a bad-input row: {missing}"
    missing_cli = sorted(cli_subcommands() - {r.target for r in ROWS if isinstance(r.target, str)})
    assert not missing_cli, f"CLI subcommands without a bad-input row: {missing_cli}"
    stale = sorted(name for name in EXEMPT if id(_resolve(name)) not in {id(o) for o in public.values()})
    assert not stale, f"EXEMPT names that are not public any more: {stale}"


def test_row_ids_are_unique():
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})


def test_memmap_training_and_validation_emit_no_warning(tmp_path, monkeypatch):
    """Read-only memory maps (np.load(mmap_mode='r')) become writable tensors: no non-writable-array warning,
    with or without shuffling, for training and for validation data."""
    np.save(tmp_path / "x.npy", X.numpy())
    np.save(tmp_path / "y.npy", Y.numpy())
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    ym = np.load(tmp_path / "y.npy", mmap_mode="r")
    seen = []
    real = torch.from_numpy

    def spy(a):
        seen.append(a.flags.writeable)
        return real(a)

    monkeypatch.setattr(torch, "from_numpy", spy)
    for shuffle in (False, True):
        training.fit_alignment(ro.AffineMap(4, 4), xm, ym, epochs=1, batch_size=8, shuffle=shuffle,
                               val=(xm, ym), metric=False, progress=False)
    ro_array = np.asarray(xm)  # a read-only in-memory view
    training.fit_alignment(ro.AffineMap(4, 4), ro_array, Y, epochs=1, batch_size=8, progress=False)
    assert seen and all(seen), "a read-only array reached torch.from_numpy"


def test_save_into_a_read_only_folder_names_the_file(tmp_path, monkeypatch):
    """A folder without write permission: PermissionError naming the file, no temporary file left. Simulated
    (root ignores permissions), and for real when not root."""
    target = tmp_path / "m.pt"
    real_open = os.open

    def refuse(path, flags, *a, **k):   # the temporary file is created with os.open (tempfile.mkstemp)
        if flags & (os.O_WRONLY | os.O_RDWR) and str(path).startswith(str(tmp_path)):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(PermissionError, match=r"cannot write the map to .*m\.pt: Permission denied"):
        ro.save(ro.AffineMap(2, 2), target)
    monkeypatch.undo()
    assert not list(tmp_path.iterdir())
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
        try:
            with pytest.raises(PermissionError, match="cannot write the map"):
                ro.save(ro.AffineMap(2, 2), folder / "m.pt")
        finally:
            folder.chmod(0o700)


def test_a_failed_cli_fit_writes_nothing(f, tmp_path):
    """A diverged trained fit exits 1 without a map file or a JSON summary (issue 11: it used to exit 0 and save a
    map with MSE 2.6e13)."""
    out, js = tmp_path / "b.pt", tmp_path / "b.json"
    with pytest.raises(CLIFailed, match="training diverged"):
        cli("fit", f.p("new.npy"), f.p("old.npy"), "--out", out, "--json", js, "--kind", "affine", "--solver",
            "trained", "--lr", "1e6", "--epochs", "20", "--quiet")
    assert not out.exists() and not js.exists() and not list(tmp_path.iterdir())


def test_cli_internal_errors_are_one_line_unless_asked(f, monkeypatch, capsys):
    """An unexpected exception (a bug) is one line with its type; RELAXEDORTHO_TRACEBACK=1 re-raises it."""
    import relaxedortho.cli.fit as cli_module  # the module of cmd_fit, which calls build_map

    def boom(*a, **k):
        raise KeyError("boom")

    monkeypatch.setattr(cli_module, "build_map", boom)
    argv = ["fit", f.p("new.npy"), f.p("old.npy"), "--out", f.p("o.pt"), "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("relaxedortho fit: error: internal error (KeyError") and "\n" not in err
    monkeypatch.setenv("RELAXEDORTHO_TRACEBACK", "1")
    with pytest.raises(KeyError):
        main(argv)
