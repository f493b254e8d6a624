"""fit_mse (one definition of the fit, used by the sweep, the demo and the CLI) and the geometry metrics."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from relaxedortho.metrics import fit_mse, gram_distortion, neighbour_agreement
from relaxedortho.training import lambda_sweep


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 30), q=st.integers(1, 9), seed=st.integers(0, 10**6),
       dtype=st.sampled_from([torch.float32, torch.float64]), scale=st.sampled_from([1e-20, 1.0, 1e20]))
def test_fit_mse_is_the_mean_over_rows_of_the_squared_row_error(n, q, seed, dtype, scale):
    rng = np.random.default_rng(seed)
    Pt, Yt = (torch.tensor(rng.normal(size=(n, q)) * scale, dtype=dtype) for _ in range(2))
    P, Y = Pt.double().numpy(), Yt.double().numpy()  # the values the function sees
    expected = sum(sum((P[i, j] - Y[i, j]) ** 2 for j in range(q)) for i in range(n)) / n  # brute force
    got = fit_mse(Pt, Yt)
    assert got == pytest.approx(expected, rel=1e-12)
    # q times the element-wise mean (torch's mse_loss): the two definitions the project used to mix
    assert got == pytest.approx(q * float(torch.nn.functional.mse_loss(torch.tensor(P), torch.tensor(Y))), rel=1e-12)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 20), p=st.integers(1, 6), seed=st.integers(0, 10**6), c=st.floats(0.1, 10.0))
def test_gram_distortion_against_numpy(n, p, seed, c):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p)) + 5.0
    Q = np.linalg.qr(rng.normal(size=(p, p)))[0]
    assert gram_distortion(torch.tensor(X), torch.tensor(X @ Q)) < 1e-12   # an orthogonal map keeps the Gram
    M = rng.normal(size=(p, p))
    G, H = X @ X.T, (X @ M) @ (X @ M).T
    assert gram_distortion(torch.tensor(X), torch.tensor(X @ M)) == pytest.approx(
        np.linalg.norm(H - G) / np.linalg.norm(G), rel=1e-10)
    assert gram_distortion(torch.tensor(X), torch.tensor(c * X)) == pytest.approx(abs(c * c - 1), rel=1e-9, abs=1e-12)


def test_neighbour_agreement_is_still_public_in_training():
    from relaxedortho import training
    from relaxedortho.training import sweep

    assert training.neighbour_agreement is neighbour_agreement is sweep.neighbour_agreement


def test_sweep_reports_fit_mse_per_row_and_keeps_its_maps_and_split():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(80, 6, generator=g, dtype=torch.float64)
    Y = X @ torch.randn(6, 4, generator=g, dtype=torch.float64) + 3.0
    table = lambda_sweep(X, Y, [0.5, math.inf], epochs=3, batch_size=40, ends=False, holdout=0.25,
                         dtype=torch.float64, tol=None)
    assert [r["map"] for r in table] == ["lambda", "affine"]          # inf is the affine end, once
    assert len(table.maps) == len(table.histories) == 2
    assert sorted(torch.cat([table.train_index, table.eval_index]).tolist()) == list(range(80))
    ev = table.eval_index
    for row, m in zip(table, table.maps):
        with torch.no_grad():
            assert row["fit_mse"] == pytest.approx(fit_mse(m(X[ev]), Y[ev]), rel=1e-12)
        assert next(m.parameters()).dtype == torch.float64 and row["seconds"] >= 0
