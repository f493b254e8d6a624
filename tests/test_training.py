"""Trainer: planted maps, the λ margin, mixed precision, inputs (NumPy, memmap, bad), NaN handling, hooks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

import relaxedortho as ro
from relaxedortho._geoopt import geoopt
from relaxedortho.training import (NonFiniteLossError, Trainer, fit_alignment, load_checkpoint, make_optimizer,
                                   parameter_groups)
from relaxedortho.training.data import RowArray, epoch_order

FAST = dict(progress=False, device="cpu", init="module", tol=None)  # the mechanics, from the module's own start


def planted(n=512, p=8, q=6, seed=0, noise=0.0, orthogonal=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, p, generator=g, dtype=torch.float64)
    if orthogonal:
        A = ro.linalg.random_orthogonal(q, p, generator=g, dtype=torch.float64)
        if p == q and torch.linalg.det(A) < 0:
            A[0] = -A[0]  # a rotation: reachable from the identity
        b = torch.zeros(q, dtype=torch.float64)
    else:
        A = torch.randn(q, p, generator=g, dtype=torch.float64) / math.sqrt(p)
        b = torch.randn(q, generator=g, dtype=torch.float64)
    Y = X @ A.T + b + noise * torch.randn(n, q, generator=g, dtype=torch.float64)
    return X.to(dtype), Y.to(dtype), A, b


# -- planted map recovery ------------------------------------------------------------------------
def test_affine_recovers_planted_map_like_least_squares():
    X, Y, A, b = planted(noise=0.01)
    m = ro.AffineMap(8, 6)
    h = fit_alignment(m, X, Y, epochs=60, batch_size=64, lr=0.02, **FAST)
    # independent reference: NumPy least squares with an intercept column, in float64
    Xa = np.hstack([X.double().numpy(), np.ones((X.shape[0], 1))])
    sol = np.linalg.lstsq(Xa, Y.double().numpy(), rcond=None)[0]
    np.testing.assert_allclose(m.weight.detach().double().numpy(), sol[:-1].T, atol=5e-3)
    np.testing.assert_allclose(m.bias.detach().double().numpy(), sol[-1], atol=5e-3)
    assert h.loss[-1] < 2e-4 and h.epochs == 60 and h.steps == 60 * 8
    assert len(h.loss) == len(h.regularizer) == len(h.orthogonality_error) == 60


@pytest.mark.parametrize("cls, kwargs, shape, lr", [
    (ro.OrthogonalLinear, {"method": "retraction", "init": "identity"}, (8, 8), 0.01),
    (ro.StiefelLinear, {"init": "identity"}, (8, 8), 0.01),
    (ro.StiefelLinear, {}, (5, 9), 0.01),   # expanding: St(9, 5) is connected
    (ro.StiefelLinear, {}, (9, 5), 0.01),   # compressing (stored transposed)
])
def test_orthogonal_maps_recover_planted_map_like_procrustes(cls, kwargs, shape, lr):
    p, q = shape
    X, Y, A, _ = planted(n=400, p=p, q=q, orthogonal=True, noise=0.01, seed=3)
    torch.manual_seed(1)
    m = cls(p, q, **kwargs)
    h = fit_alignment(m, X, Y, epochs=60, batch_size=100, lr=lr, **FAST)
    assert m.orthogonality_error() < 1e-4  # stays on the manifold
    # the optimum over orthonormal maps, computed independently (SciPy Procrustes on XᵀY, exact for p <= q
    # and, for p > q, the data come from an orthonormal-row map, so it is recovered too)
    if p == q:
        R, _ = scipy.linalg.orthogonal_procrustes(X.double().numpy(), Y.double().numpy())
        ref = R.T
    elif p < q:  # rectangular Procrustes, WWᵀ = I: W = UVᵀ of XᵀY (docs/math.md §5)
        u, _, vt = np.linalg.svd(X.double().numpy().T @ Y.double().numpy(), full_matrices=False)
        ref = (u @ vt).T
    else:
        ref = A.numpy()
    np.testing.assert_allclose(m.weight.detach().double().numpy(), ref, atol=2e-2)
    assert h.loss[-1] < 1e-3


def test_stiefel_gets_riemannian_adam_at_scaled_lr_and_no_decay_on_orthogonal_factors():
    st = ro.StiefelLinear(6, 4, bias=True)
    opt = make_optimizer(st, 1e-3, weight_decay=0.1)
    assert isinstance(opt, geoopt.optim.RiemannianAdam)
    man = [g for g in opt.param_groups if g["name"] == "manifold"]
    assert len(man) == 1 and man[0]["lr"] == pytest.approx(ro.riemannian_lr(1e-3, 6, 4)) and man[0]["weight_decay"] == 0
    free = [g for g in opt.param_groups if g["name"] == "free"]
    assert free[0]["params"][0] is st.bias and free[0]["weight_decay"] == 0.1
    orth = ro.OrthogonalLinear(5, 5, bias=True)
    groups = {g["name"]: g for g in parameter_groups(orth, 1e-3, weight_decay=0.1)}
    assert groups["orthogonal"]["params"] == [orth.generator] and groups["orthogonal"]["weight_decay"] == 0.0
    assert groups["free"]["params"] == [orth.bias]
    assert type(make_optimizer(orth, 1e-3)) is torch.optim.Adam


# -- the λ margin ------------------------------------------------------------------------------------
def _fit_scaled_rotation(lam, alpha, scale, d=8):
    X, _, Q, _ = planted(n=512, p=d, q=d, orthogonal=True, seed=5)
    Y = (X.double() @ (scale * Q).T).float()
    assert ro.linalg.orthogonality_error(scale * Q) == pytest.approx((scale ** 2 - 1) * math.sqrt(d))
    torch.manual_seed(0)
    m = ro.LambdaOrthoLinear(d, d, lam=lam, alpha=alpha)
    # weight 1 on the penalty: these tests are about its mechanics against the mean loss (docs/math.md §2)
    h = fit_alignment(m, X, Y, epochs=40, batch_size=64, lr=0.01, regularizer_weight=1.0, **FAST)
    return m.orthogonality_error(), h


@pytest.mark.parametrize("lam, alpha, below", [(0.5, 40.0, 0.15), (2.0, 40.0, 0.15), (2.0, 10.0, 0.5)])
def test_lambda_map_settles_near_lambda_when_data_pull_beyond(lam, alpha, below):
    """The planted map 4·Q has ‖G − I‖_F = 15√8 ≫ λ. With the mean loss the data's pull is weaker than the
    penalty's slope at the threshold (½ + αλ/4), so training holds the deviation just under λ, inside the
    gate's transition band (about ±4.6/α): the paper saw 12.05 for λ = 12 (docs/math.md §2)."""
    err, h = _fit_scaled_rotation(lam, alpha, 4.0)
    assert lam - below < err < lam + 0.05, (err, lam)
    assert h.loss[-1] < h.loss[0]


def test_lambda_map_is_overrun_when_the_pull_exceeds_the_penalty_slope():
    """docs/math.md §2: the penalty's slope is bounded (½ + αλ/4 = 1.75 at λ = 0.5, α = 10), so a strong enough
    pull (planted 8·Q) runs the map far past λ — λ is a tolerance, not a constraint."""
    err, _ = _fit_scaled_rotation(0.5, 10.0, 8.0)
    assert err > 0.5 + 1.0


# -- mixed precision ---------------------------------------------------------------------------------
class _Recorder(Trainer):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.out_dtypes, self.reg_dtypes = set(), set()

    def compute_loss(self, batch):
        self.out_dtypes.add(self.model(batch[0]).dtype)
        return super().compute_loss(batch)

    def regularizer(self):
        r = super().regularizer()
        self.reg_dtypes.add(r.dtype)
        return r


def test_bf16_autocast_on_cpu_trains_without_nan_and_keeps_regularizer_float32():
    X, Y, _, _ = planted(n=256, p=16, q=16, orthogonal=True, seed=2)
    Y = 1.5 * Y
    torch.manual_seed(0)
    m = ro.LambdaOrthoLinear(16, 16, lam=1.0)
    t = _Recorder(m, epochs=10, batch_size=64, lr=0.01, amp="bf16", **FAST)
    h = t.fit(X, Y)
    assert t.out_dtypes == {torch.bfloat16}  # the forward really ran in bf16
    assert t.reg_dtypes == {torch.float32}
    assert all(math.isfinite(v) for v in h.loss + h.regularizer)
    assert h.loss[-1] < h.loss[0]
    assert m.weight.dtype == torch.float32 and torch.isfinite(m.weight).all()
    with pytest.raises(ValueError, match="fp16"):
        Trainer(m, epochs=1, batch_size=8, amp="fp16", device="cpu")


# -- NumPy and memory-mapped input -------------------------------------------------------------------
def test_numpy_and_memmap_inputs_give_the_same_weights_as_tensors(tmp_path):
    X, Y, _, _ = planted(n=200, p=6, q=4, seed=7)
    np.save(tmp_path / "x.npy", X.numpy())
    np.save(tmp_path / "y.npy", Y.double().numpy())  # float64 on disk, cast per batch
    mx, my = np.load(tmp_path / "x.npy", mmap_mode="r"), np.load(tmp_path / "y.npy", mmap_mode="r")
    results = []
    for src, tgt in ((X, Y.double().float()), (X.numpy(), Y.double().numpy()), (mx, my)):
        torch.manual_seed(0)
        m = ro.LambdaOrthoLinear(6, 4, lam=0.5)
        fit_alignment(m, src, tgt, epochs=3, batch_size=32, lr=0.01, **FAST)
        results.append(m.weight.detach().clone())
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])
    ra = RowArray(mx, "x")
    ra.preload(torch.device("cpu"), torch.float32)
    assert isinstance(ra.data, np.memmap)  # memory maps stay lazy
    batch = ra.rows(torch.tensor([5, 1, 7]), torch.device("cpu"), torch.float32)
    assert torch.equal(batch, X[[5, 1, 7]])


def test_memmap_with_nan_is_rejected(tmp_path):
    x = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=(10, 3))
    x[:] = 1.0
    x[7, 2] = np.nan
    x.flush()
    with pytest.raises(ValueError, match="source contains NaN"):
        fit_alignment(ro.AffineMap(3, 3), np.load(tmp_path / "x.npy", mmap_mode="r"), np.ones((10, 3), np.float32),
                      epochs=1, batch_size=4, **FAST)


# -- bad input: clear errors before training -------------------------------------------------------
class _Spy:
    calls = 0

    def __call__(self, out, y):
        self.calls += 1
        return torch.nn.functional.mse_loss(out, y)


@pytest.mark.parametrize("make, exc, match", [
    (lambda: (torch.randn(10, 4), torch.randn(9, 3)), ValueError, "same number of rows"),
    (lambda: (torch.full((10, 4), math.nan), torch.randn(10, 3)), ValueError, "source contains NaN"),
    (lambda: (torch.randn(10, 4), torch.full((10, 3), math.inf)), ValueError, "target contains NaN or Inf"),
    (lambda: (torch.randn(10, 5), torch.randn(10, 3)), ValueError, "in_features=4"),
    (lambda: (torch.randn(10, 4), torch.randn(10, 2)), ValueError, "out_features=3"),
    (lambda: (torch.ones(10, 4, dtype=torch.int64), torch.randn(10, 3)), TypeError, "floating"),
    (lambda: (np.ones((10, 4), dtype=np.int32), torch.randn(10, 3)), TypeError, "floating"),
    (lambda: (torch.randn(10), torch.randn(10, 3)), ValueError, "2-dimensional"),
    (lambda: (torch.randn(0, 4), torch.randn(0, 3)), ValueError, "empty"),
    (lambda: ([[1.0] * 4] * 10, torch.randn(10, 3)), TypeError, "torch.Tensor"),
])
def test_bad_data_fails_before_training(make, exc, match):
    m = ro.AffineMap(4, 3)
    w0 = m.weight.detach().clone()
    spy = _Spy()
    src, tgt = make()
    with pytest.raises(exc, match=match):
        fit_alignment(m, src, tgt, epochs=1, batch_size=4, loss_fn=spy, **FAST)
    assert spy.calls == 0 and torch.equal(m.weight, w0)


@pytest.mark.parametrize("options, match", [
    ({"epochs": 0}, "epochs"), ({"batch_size": 2.5}, "batch_size"), ({"lr": -1.0}, "lr"),
    ({"amp": "int8"}, "amp"), ({"device": "tpu9"}, "device"), ({"early_stopping": 3}, "val"),
    ({"checkpoint_every": 5}, "checkpoint"), ({"val": (torch.randn(4, 4),)}, "val"),
    ({"clip_grad_norm": 0.0}, "clip_grad_norm"), ({"metric": 3}, "metric"),
    ({"val": (torch.randn(5, 4), torch.randn(5, 2))}, "out_features=3"),
    ({"val": (torch.randn(5, 4), torch.randn(5, 3), torch.zeros(4, dtype=torch.long))}, "same number of rows"),
])
def test_bad_options_fail_before_training(options, match):
    kw = {"epochs": 1, "batch_size": 4, "lr": 1e-3, **FAST, **options}
    with pytest.raises((ValueError, TypeError), match=match):
        fit_alignment(ro.AffineMap(4, 3), torch.randn(8, 4), torch.randn(8, 3), **kw)


# -- NaN loss ----------------------------------------------------------------------------------------
class _NanAt:
    def __init__(self, step):
        self.step, self.calls = step, 0

    def __call__(self, out, y):
        self.calls += 1
        loss = torch.nn.functional.mse_loss(out, y)
        return loss * math.nan if self.calls >= self.step else loss


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    X, Y, _, _ = planted(n=128, p=4, q=4, seed=1)
    ck = tmp_path / "ck.pt"
    m = ro.LambdaOrthoLinear(4, 4, lam=1.0)
    with pytest.raises(NonFiniteLossError, match="at step 7 ") as info:
        fit_alignment(m, X, Y, epochs=3, batch_size=16, lr=0.01, loss_fn=_NanAt(7), checkpoint=ck,
                      checkpoint_every=5, log_every=3, **FAST)
    assert info.value.step == 7 and "step 5" in str(info.value)
    state = load_checkpoint(ck)
    assert state["step"] == 5
    assert torch.equal(m.weight.detach(), state["module"]["weight"])  # good weights restored
    assert torch.isfinite(m.weight).all()
    m2 = ro.AffineMap(4, 4)
    with pytest.raises(NonFiniteLossError, match="at step 3 .*No checkpoint"):
        fit_alignment(m2, X, Y, epochs=1, batch_size=16, loss_fn=_NanAt(3), **FAST)


# -- validation, early stopping, hooks, seeding ------------------------------------------------------
def test_early_stopping_on_metric_restores_the_best_weights():
    X, Y, _, _ = planted(n=64, p=4, q=3, seed=4)
    scores = iter([0.1, 0.5, 0.4, 0.3, 0.2, 0.9, 0.9])
    seen = []

    def metric(mapped, target, labels):
        assert mapped.shape == target.shape == (16, 3) and labels is None
        return next(scores)

    class Snap:
        def on_epoch_end(self, trainer, epoch, logs):
            seen.append((logs["val_metric"], trainer.module.weight.detach().clone()))

    m = ro.AffineMap(4, 3)
    h = fit_alignment(m, X, Y, epochs=7, batch_size=16, lr=0.01, val=(X[:16], Y[:16]), metric=metric,
                      early_stopping=2, callbacks=[Snap()], **FAST)
    assert h.stopped_early and h.epochs == 4 and h.best_epoch == 1 and h.best_metric == 0.5
    assert h.val_metric == [0.1, 0.5, 0.4, 0.3] and len(h.val_loss) == 4
    assert torch.equal(m.weight.detach(), seen[1][1])


def test_validation_without_early_stopping_runs_all_epochs_and_hooks_fire():
    X, Y, _, _ = planted(n=64, p=4, q=3, seed=4)
    events = []

    class T(Trainer):
        def on_step_end(self, step, loss):
            events.append(("step", step))

        def on_train_end(self, history):
            events.append(("end", history.epochs))

    t = T(ro.AffineMap(4, 3), epochs=3, batch_size=32, lr=0.01, val=(X, Y, torch.arange(64) % 4),
          metric=lambda a, b, lab: float(lab.max()), **FAST)
    h = t.fit(X, Y)
    assert h.val_metric == [3.0, 3.0, 3.0] and not h.stopped_early
    assert events == [("step", i) for i in range(1, 7)] + [("end", 3)]
    assert h.val_loss[-1] == pytest.approx(float(torch.nn.functional.mse_loss(t.module(X).detach(), Y)), rel=1e-5)


def test_same_seed_same_weights_other_seed_other_weights():
    X, Y, _, _ = planted(n=96, p=5, q=5, seed=8)
    out = []
    for seed in (3, 3, 4):
        torch.manual_seed(0)
        m = ro.LambdaOrthoLinear(5, 5, lam=0.3)
        fit_alignment(m, X, Y, epochs=2, batch_size=16, lr=0.01, seed=seed, **FAST)
        out.append(m.weight.detach().clone())
    assert torch.equal(out[0], out[1]) and not torch.equal(out[0], out[2])
    a, b = epoch_order(10, 0, 1, True), epoch_order(10, 1, 1, True)
    assert sorted(a.tolist()) == list(range(10)) and not torch.equal(a, b)
    assert epoch_order(10, 0, 1, False) is None


def test_gradient_clipping_and_progress_bar(capsys):
    X, Y, _, _ = planted(n=64, p=4, q=3, seed=4)
    norms = []

    class Clip(Trainer):
        def on_step_end(self, step, loss):
            norms.append(float(torch.linalg.vector_norm(torch.stack(
                [p.grad.norm() for p in self.module.parameters()]))))

    Clip(ro.AffineMap(4, 3), epochs=2, batch_size=16, lr=0.01, clip_grad_norm=1e-3, progress=True,
         device="cpu").fit(100 * X, Y)
    assert max(norms) <= 1e-3 * (1 + 1e-5)
    assert "epoch 2/2" in capsys.readouterr().err


def test_default_validation_metric_is_cmc_top1_against_brute_force():
    pytest.importorskip("relaxedortho.metrics")
    from relaxedortho.training import default_retrieval_metric

    g = torch.Generator().manual_seed(0)
    q, gal = torch.randn(30, 4, generator=g), torch.randn(30, 4, generator=g)
    labels = torch.arange(30) % 6

    def top1(a, b, la, lb):
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        return float((lb[(a @ b.T).argmax(1)] == la).mean())

    assert default_retrieval_metric(q, gal, labels) == pytest.approx(top1(q.numpy(), gal.numpy(), labels.numpy(),
                                                                          labels.numpy()))
    pairs = np.arange(30)
    assert default_retrieval_metric(q, gal, None) == pytest.approx(top1(q.numpy(), gal.numpy(), pairs, pairs))
    X, Y, _, _ = planted(n=64, p=4, q=3, seed=4)
    h = fit_alignment(ro.AffineMap(4, 3), X, Y, epochs=2, batch_size=32, val=(X, Y), **FAST)
    assert len(h.val_metric) == 2 and 0.0 <= h.val_metric[-1] <= 1.0
