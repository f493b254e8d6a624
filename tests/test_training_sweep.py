"""λ sweep table and plot; the B/F pair trainer."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import relaxedortho as ro
from relaxedortho.training import PairTrainer, SweepTable, fit_pair, lambda_sweep, neighbour_agreement, plot_tradeoff

FAST = dict(progress=False, device="cpu")


def _sweep_data(n=300, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    A = torch.randn(d, d, generator=g) / math.sqrt(d) + torch.eye(d)  # far from orthogonal
    return X, X @ A.T + 0.5, (torch.arange(n) % 5)


@pytest.fixture(scope="module")
def table():
    X, Y, labels = _sweep_data()
    return lambda_sweep(X, Y, [2.0, 0.2], epochs=100, batch_size=64, lr=0.02, labels=labels,
                        metric=lambda a, b, lab: float(lab.float().mean()), **FAST)


def test_sweep_table_has_both_ends_and_the_trade_off(table):
    assert isinstance(table, SweepTable) and len(table) == 4
    assert table.column("map") == ["orthogonal", "lambda", "lambda", "affine"]
    assert table.column("lam")[:3] == [None, 0.2, 2.0] and math.isinf(table.column("lam")[3])
    ortho, small, large, affine = table.rows
    assert ortho["orthogonality_error"] < 1e-4
    assert ortho["geometry"] == 1.0  # an isometry keeps every nearest neighbour
    assert small["orthogonality_error"] < large["orthogonality_error"] < affine["orthogonality_error"]
    # the soft gate keeps each λ-map at or below its tolerance (here the data pull only weakly beyond it)
    assert small["orthogonality_error"] < 0.2 + 0.05 and large["orthogonality_error"] < 2.0 + 0.1
    assert affine["fit_mse"] < large["fit_mse"] < small["fit_mse"] < ortho["fit_mse"]  # more λ, better fit
    assert len(set(table.column("metric"))) == 1 and 1.0 < table.rows[0]["metric"] < 3.0  # same held-out labels
    md = table.to_markdown()
    assert md.splitlines()[0].startswith("| map | lam |") and "⊥" in md and "∞" in md and len(md.splitlines()) == 6


def test_plot_tradeoff_writes_a_png(table, tmp_path):
    import matplotlib.pyplot as plt

    fig = plot_tradeoff(table, tmp_path / "tradeoff.png")
    plt.close(fig)
    data = (tmp_path / "tradeoff.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_neighbour_agreement_matches_brute_force():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 5))
    y = x @ rng.standard_normal((5, 5)) + 0.3 * rng.standard_normal((40, 5))

    def nn(z):
        d = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
        np.fill_diagonal(d, np.inf)
        return d.argmin(1)

    expected = float((nn(x) == nn(y)).mean())
    assert 0 < expected < 1
    assert neighbour_agreement(torch.from_numpy(x), torch.from_numpy(y), chunk=7) == pytest.approx(expected)
    with pytest.raises(ValueError):
        neighbour_agreement(torch.randn(1, 3), torch.randn(1, 3))


def test_sweep_rejects_bad_input():
    X, Y, _ = _sweep_data(n=20)
    with pytest.raises(ValueError, match="lams"):
        lambda_sweep(X, Y, [-1.0], epochs=1, **FAST)
    with pytest.raises(ValueError, match="same number of rows"):
        lambda_sweep(X, Y[:10], [1.0], epochs=1, **FAST)
    with pytest.raises(ValueError, match="holdout"):
        lambda_sweep(X, Y, [1.0], epochs=1, holdout=1.0, **FAST)


# -- B/F pair -----------------------------------------------------------------------------------------
SIMPLE = {"backward_loss": lambda b, old: (b - old).pow(2).sum(1).mean(),
          "forward_loss": lambda f, b: (f - b).pow(2).sum(1).mean(),
          "supervised_contrastive": lambda a, b, la, lb=None, temperature=0.07: (a - b).pow(2).mean() * 0}


def _pair_data(n=256, d_new=8, d_old=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    old = torch.randn(n, d_old, generator=g)
    Q = ro.linalg.random_orthogonal(d_new, d_old, generator=g)  # new = old Qᵀ: B = Qᵀ recovers old exactly
    return old @ Q.T, old, Q, torch.arange(n) % 3


def test_pair_trainer_recovers_backward_map_and_aligns_forward():
    new, old, Q, labels = _pair_data()
    torch.manual_seed(0)
    B, F = ro.StiefelLinear(8, 6), ro.AffineMap(6, 6)
    h = fit_pair(B, F, new, old, labels, epochs=100, batch_size=64, lr=0.03, losses=SIMPLE,
                 val=(new[:64], old[:64]), metric=lambda a, b, lab: -float((a - b).pow(2).mean()), **FAST)
    # the data see B only on span(Q): there B must undo Q (B Q = I); off it, only the (slowly
    # converging, second-order) orthonormality of B's rows acts
    torch.testing.assert_close(B.weight.detach() @ Q, torch.eye(6), atol=1e-2, rtol=0)
    with torch.no_grad():
        assert float((F(old) - B(new)).pow(2).mean()) < 1e-3
    assert h.val_metric[-1] > -1e-3 and h.orthogonality_error[-1] < 1e-4


def test_pair_trainer_checks_dimensions_and_weights():
    new, old, _, labels = _pair_data()
    with pytest.raises(ValueError, match="backward_map.in_features"):
        fit_pair(ro.AffineMap(7, 6), ro.AffineMap(6, 6), new, old, epochs=1, batch_size=8, losses=SIMPLE, **FAST)
    with pytest.raises(ValueError, match="forward_map"):
        fit_pair(ro.AffineMap(8, 6), ro.AffineMap(6, 5), new, old, epochs=1, batch_size=8, losses=SIMPLE, **FAST)
    with pytest.raises(ValueError, match="weights"):
        PairTrainer(ro.AffineMap(8, 6), ro.AffineMap(6, 6), weights=(1, 1), epochs=1, batch_size=8)
    with pytest.raises(TypeError, match="integer class labels"):
        fit_pair(ro.AffineMap(8, 6), ro.AffineMap(6, 6), new, old, labels.float(), epochs=1, batch_size=8,
                 losses=SIMPLE, **FAST)


def test_pair_trainer_with_the_library_losses():
    losses = pytest.importorskip("relaxedortho.losses")
    new, old, _, labels = _pair_data(n=128)
    torch.manual_seed(0)
    B, F = ro.LambdaOrthoLinear(8, 6, lam=0.5), ro.AffineMap(6, 6)
    h = fit_pair(B, F, new, old, labels, epochs=5, batch_size=32, lr=0.01, losses=losses, init="module", tol=None,
                 **FAST)  # 20 steps, all in the warm-up: not converged, and not the point here
    assert all(math.isfinite(v) for v in h.loss) and h.loss[-1] < h.loss[0]
