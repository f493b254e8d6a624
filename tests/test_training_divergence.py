"""The trainer fails loudly instead of returning a ruined map: divergence (final loss far above the initial loss)
and data whose squared errors overflow the training dtype. Healthy runs at realistic learning rates never trip it."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import relaxedortho as ro
from relaxedortho.training import TrainingDivergedError, fit_alignment, load_checkpoint

FAST = dict(progress=False, device="cpu", init="module", tol=None)  # the mechanics, from the module's own start


def embeddings(n=256, p=12, q=8, seed=0, offset=3.0, scale=1.0, dtype=torch.float32):
    """Embedding-like pairs: power-law feature scales, a large common offset, a planted map far from the
    identity (det -1 when square), a little noise."""
    g = torch.Generator().manual_seed(seed)
    spectrum = torch.arange(1, p + 1, dtype=torch.float64) ** -1.0
    X = torch.randn(n, p, generator=g, dtype=torch.float64) * spectrum + offset
    A = torch.randn(q, p, generator=g, dtype=torch.float64)
    Y = X @ A.T / math.sqrt(p) + 0.05 * torch.randn(n, q, generator=g, dtype=torch.float64)
    return (X * scale).to(dtype), (Y * scale).to(dtype)


MAPS = {
    "affine": lambda p, q: ro.AffineMap(p, q),
    "lambda": lambda p, q: ro.LambdaOrthoLinear(p, q, lam=1.0),
    "orthogonal": lambda p, q: ro.OrthogonalLinear(p, q, bias=True),
}


@settings(max_examples=12, deadline=None)
@given(kind=st.sampled_from(sorted(MAPS)), lr=st.sampled_from([1e-4, 1e-3, 1e-2, 1e-1]),
       batch_size=st.sampled_from([8, 64, 256]), seed=st.integers(0, 2 ** 16),
       scale=st.sampled_from([1e-3, 1.0, 1e3]), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_healthy_runs_at_realistic_learning_rates_do_not_trip_the_check(kind, lr, batch_size, seed, scale, dtype):
    """Adam moves every parameter by about lr per step, in the parameters' units: a bias fitting targets of size
    1e-3 at lr 0.1 overshoots a hundredfold, a real divergence the check reports (the next test). Realistic here:
    lr at most a tenth of the data scale."""
    assume(lr <= 0.1 * scale)
    X, Y = embeddings(seed=seed, scale=scale, dtype=dtype)
    torch.manual_seed(seed)
    m = MAPS[kind](12, 8).to(dtype)
    h = fit_alignment(m, X, Y, epochs=3, batch_size=batch_size, lr=lr, seed=seed, **FAST)
    assert h.initial_loss is not None and h.loss[-1] <= 10 * h.initial_loss


def test_a_diverged_run_raises_with_the_numbers():
    X, Y = embeddings()
    torch.manual_seed(0)
    m = ro.AffineMap(12, 8)
    with pytest.raises(TrainingDivergedError, match=r"training diverged.*lr \(now 1e\+06") as info:
        fit_alignment(m, X, Y, epochs=5, batch_size=32, lr=1e6, **FAST)
    h = info.value.history
    assert h.loss[-1] > 10 * h.initial_loss and h.epochs == 5
    # the same run with the check off returns the (ruined) history instead
    torch.manual_seed(0)
    m2 = ro.AffineMap(12, 8)
    h2 = fit_alignment(m2, X, Y, epochs=5, batch_size=32, lr=1e6, divergence_factor=None, **FAST)
    assert h2.loss == h.loss and torch.equal(m2.weight, m.weight)  # the same run, returned instead


def test_initial_loss_is_the_first_step_loss():
    X, Y = embeddings()
    steps = []
    h = fit_alignment(ro.AffineMap(12, 8), X, Y, epochs=1, batch_size=32, lr=1e-3,
                      callbacks=[type("CB", (), {"on_step_end": lambda self, t, s, loss: steps.append(float(loss))})()],
                      **FAST)
    assert h.initial_loss == steps[0]


def test_the_factor_is_honoured_and_a_small_target_scale_with_a_large_lr_is_caught():
    X, Y = embeddings(scale=1e-3)
    kw = dict(epochs=3, batch_size=64, lr=0.1, warmup=0, **FAST)  # Adam's full first steps
    torch.manual_seed(0)
    h = fit_alignment(ro.AffineMap(12, 8), X, Y, divergence_factor=None, **kw)
    ratio = h.loss[-1] / h.initial_loss
    assert ratio > 10  # the bias overshoots targets of size 1e-3 by lr = 0.1 steps: worse than the start
    for factor, raises in ((ratio * 0.9, True), (ratio * 1.1, False)):
        torch.manual_seed(0)
        if raises:
            with pytest.raises(TrainingDivergedError):
                fit_alignment(ro.AffineMap(12, 8), X, Y, divergence_factor=factor, **kw)
        else:
            assert fit_alignment(ro.AffineMap(12, 8), X, Y, divergence_factor=factor, **kw).loss == h.loss


def test_a_perfect_initial_fit_does_not_trip_on_rounding_noise():
    """Initial loss exactly 0: a tiny weight decay moves the loss to rounding level, which the eps floor absorbs
    (without the floor, any positive final loss would be 'infinitely' above the start)."""
    X, _ = embeddings(p=8, q=8)
    m = ro.AffineMap(8, 8, init="identity")
    with torch.no_grad():
        m.bias.zero_()
    h = fit_alignment(m, X, X.clone(), epochs=2, batch_size=64, lr=1e-7, weight_decay=1e-2, warmup=0, **FAST)
    assert h.initial_loss == 0.0 and 0.0 < h.loss[-1] < 1e-6


def test_early_stopping_compares_the_restored_epoch():
    """The run blows up after its best epoch; early stopping restores the best weights: no error."""
    X, Y = embeddings()
    scores = iter([0.5, 0.9, 0.1, 0.1, 0.1, 0.1])

    class BlowUp:
        def on_epoch_end(self, trainer, epoch, logs):
            if epoch == 1:
                for g in trainer.optimizer.param_groups:
                    g["lr"] = 1e6

    h = fit_alignment(ro.AffineMap(12, 8), X, Y, epochs=6, batch_size=32, lr=1e-2, val=(X, Y),
                      metric=lambda *a: next(scores), early_stopping=2, callbacks=[BlowUp()], **FAST)
    assert h.best_epoch == 1 and h.loss[-1] > 10 * h.initial_loss and h.loss[1] < h.initial_loss
    with pytest.raises(TrainingDivergedError):  # without restoring, the last epoch is compared
        scores = iter([0.5, 0.9, 0.1, 0.1, 0.1, 0.1])
        fit_alignment(ro.AffineMap(12, 8), X, Y, epochs=6, batch_size=32, lr=1e-2, val=(X, Y),
                      metric=lambda *a: next(scores), early_stopping=2, restore_best=False, callbacks=[BlowUp()],
                      **FAST)


def test_the_initial_loss_survives_a_resume(tmp_path):
    X, Y = embeddings()
    ck = tmp_path / "ck.pt"

    class Stop(Exception):
        pass

    class Interrupt:
        def on_step_end(self, trainer, step, loss):
            if step == 10:
                raise Stop

    with pytest.raises(Stop):
        fit_alignment(ro.AffineMap(12, 8), X, Y, epochs=3, batch_size=32, lr=1e-2, checkpoint=ck,
                      checkpoint_every=5, callbacks=[Interrupt()], **FAST)
    first = load_checkpoint(ck)["history"]["initial_loss"]
    h = fit_alignment(ro.AffineMap(12, 8), X, Y, epochs=3, batch_size=32, lr=1e-2, checkpoint=ck, resume=True,
                      **FAST)
    full = fit_alignment(ro.AffineMap(12, 8), X, Y, epochs=3, batch_size=32, lr=1e-2, **FAST)
    assert first is not None and h.initial_loss == first == full.initial_loss


# -- data too large for the dtype ----------------------------------------------------------------------------
def test_float32_data_whose_squares_overflow_is_refused_before_training():
    X, Y = embeddings(scale=1e30, dtype=torch.float64)
    m = ro.AffineMap(12, 8)
    w0 = m.weight.detach().clone()
    with pytest.raises(ValueError, match=r"source has values up to .*overflow float32"):
        fit_alignment(m, X, Y, epochs=1, batch_size=32, **FAST)
    assert torch.equal(m.weight.detach(), w0)  # nothing trained


def test_the_same_data_train_in_float64():
    X, Y = embeddings(scale=1e30, dtype=torch.float64)
    torch.manual_seed(0)
    m = ro.AffineMap(12, 8, dtype=torch.float64)
    h = fit_alignment(m, X, Y, epochs=3, batch_size=32, lr=1e-2, **FAST)
    assert all(math.isfinite(v) for v in h.loss) and h.loss[-1] < h.initial_loss


def test_the_scale_check_follows_the_loss_and_check_finite():
    X, Y = embeddings(scale=1e20)
    l1 = lambda out, y: (out / 1e20 - y / 1e20).abs().mean()  # noqa: E731 - a loss that does not square
    fit_alignment(ro.AffineMap(12, 8), X, Y, epochs=1, batch_size=32, loss_fn=l1, **FAST)
    with pytest.raises(ValueError, match="overflow"):
        fit_alignment(ro.AffineMap(12, 8), X, Y, epochs=1, batch_size=32, **FAST)
    with pytest.raises(ValueError, match="overflow"):
        fit_alignment(ro.AffineMap(12, 8), X, Y, epochs=1, batch_size=32, check_finite=True, **FAST)
    # large data whose squares fit in float32 train as usual
    Xs, Ys = embeddings(scale=1e15)
    torch.manual_seed(0)
    h = fit_alignment(ro.AffineMap(12, 8), Xs, Ys, epochs=2, batch_size=32, lr=1e-2, **FAST)
    assert all(math.isfinite(v) for v in h.loss)
