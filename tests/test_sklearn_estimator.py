"""ClosedFormAlignment is a real scikit-learn estimator: check_estimator, clone, pipelines, grid search, CV."""
from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError, SkipTestWarning
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from relaxedortho.closed_form import ClosedFormAlignment, fit_closed_form


def _data(n=120, p=5, q=5, seed=6, noise=0.3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)) * np.geomspace(3, 0.3, p)      # anisotropic
    Q = np.linalg.qr(rng.standard_normal((max(p, q), max(p, q))))[0][:p, :q]
    return X, X @ Q + noise * rng.standard_normal((n, q)) + 2.0


@pytest.mark.slow
def test_check_estimator_passes():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkipTestWarning)   # the array-API check needs SCIPY_ARRAY_API=1
        results = check_estimator(ClosedFormAlignment(), on_fail=None)
    failed = [(r["check_name"], repr(r["exception"])[:300]) for r in results if r["status"] == "failed"]
    assert not failed and len(results) > 40


def test_fit_transform_score_match_fit_closed_form():
    X, Y = _data()
    est = ClosedFormAlignment("ridge", ridge=0.5).fit(X, Y)
    m = fit_closed_form(X, Y, kind="ridge", ridge=0.5)
    np.testing.assert_array_equal(est.coef_, m.weight.detach().numpy())
    assert est.coef_.shape == (5, 5) and est.intercept_.shape == (5,) and est.n_features_in_ == 5
    np.testing.assert_allclose(est.transform(X), X @ est.coef_.T + est.intercept_, rtol=1e-12)
    assert abs(est.score(X, Y) - r2_score(Y, est.predict(X), multioutput="variance_weighted")) < 1e-12
    np.testing.assert_array_equal(est.fit_transform(X, Y), est.transform(X))
    w = np.random.default_rng(0).uniform(0.5, 2, len(X))
    assert abs(est.score(X, Y, sample_weight=w)
               - r2_score(Y, est.predict(X), sample_weight=w, multioutput="variance_weighted")) < 1e-12


def test_params_clone_and_old_spellings():
    est = ClosedFormAlignment("ridge", ridge=0.5)
    assert est.get_params() == {"kind": "ridge", "options": {"ridge": 0.5}}
    assert ClosedFormAlignment("ridge", {"ridge": 0.5}).get_params() == est.get_params()
    c = clone(est.fit(*_data()))
    assert c.get_params() == est.get_params() and not hasattr(c, "coef_")
    c.set_params(ridge=2.0, kind="ridge")                   # a kind's option by its own name
    assert c.options == {"ridge": 2.0} and est.options == {"ridge": 0.5}
    assert "ridge" in repr(est)
    X, Y = _data()
    with pytest.warns(FutureWarning, match="now y"):
        old = ClosedFormAlignment("centered").fit(X, Y=Y)
    np.testing.assert_array_equal(old.coef_, ClosedFormAlignment("centered").fit(X, Y).coef_)
    with pytest.raises(TypeError, match="once"):
        ClosedFormAlignment().fit(X, Y, Y=Y)


def test_tensors_one_d_targets_and_float32():
    X, Y = _data()
    est = ClosedFormAlignment("orthogonal").fit(torch.from_numpy(X), torch.from_numpy(Y))
    assert np.allclose(est.intercept_, 0)
    np.testing.assert_allclose(est.transform(torch.from_numpy(X)), est.transform(X))
    y = Y[:, 0]
    est1 = ClosedFormAlignment("affine").fit(X, y)
    assert est1.predict(X).shape == (len(X),) and est1.coef_.shape == (1, 5)
    np.testing.assert_allclose(est1.predict(X), ClosedFormAlignment("affine").fit(X, y[:, None]).predict(X)[:, 0])
    e32 = ClosedFormAlignment("centered").fit(X.astype(np.float32), Y.astype(np.float32))
    assert e32.transform(X.astype(np.float32)).dtype == np.float32
    ints = ClosedFormAlignment("affine").fit(np.arange(40).reshape(20, 2) % 7, np.arange(20) % 3)
    assert ints.coef_.dtype == np.float64


def test_rectangular_maps():
    X, Y = _data(p=6, q=3)
    est = ClosedFormAlignment("orthogonal").fit(X, Y)
    assert est.coef_.shape == (3, 6)
    np.testing.assert_allclose(est.coef_ @ est.coef_.T, np.eye(3), atol=1e-12)


def test_pipeline_grid_search_and_cross_validation():
    X, Y = _data(n=150)
    pipe = make_pipeline(StandardScaler(), ClosedFormAlignment("ridge", ridge=1.0))
    pipe.fit(X, Y)
    assert pipe.score(X, Y) > 0.8
    grid = GridSearchCV(ClosedFormAlignment("ridge"), {"ridge": [1e-3, 1.0, 1e4]}, cv=KFold(3))
    grid.fit(X, Y)
    assert grid.best_params_["ridge"] in (1e-3, 1.0) and grid.best_estimator_.options["ridge"] in (1e-3, 1.0)
    kinds = GridSearchCV(ClosedFormAlignment(), {"kind": ["orthogonal", "centered", "affine"]}, cv=KFold(3))
    assert kinds.fit(X, Y).best_params_["kind"] in ("centered", "affine")     # the data have an offset
    scores = cross_val_score(ClosedFormAlignment("centered"), X, Y, cv=KFold(4))
    assert scores.shape == (4,) and np.all(scores > 0.8)


def test_errors():
    X, Y = _data()
    with pytest.raises(NotFittedError, match="not fitted"):
        ClosedFormAlignment().transform(X)
    with pytest.raises(ValueError, match="kind"):
        ClosedFormAlignment("nope").fit(X, Y)
    with pytest.raises(TypeError, match="unexpected option"):
        ClosedFormAlignment("orthogonal", ridge=1.0).fit(X, Y)
    with pytest.raises(TypeError, match="options must be a dict"):
        ClosedFormAlignment("ridge", options=3).fit(X, Y)
    with pytest.raises(TypeError, match=r"fit\(\) takes only"):
        ClosedFormAlignment("ridge").fit(X, Y, kind="affine")
    with pytest.raises(ValueError, match="requires y"):
        ClosedFormAlignment().fit(X)
    est = ClosedFormAlignment().fit(X, Y)
    with pytest.raises(ValueError, match="X has 3 features, but ClosedFormAlignment is expecting 5"):
        est.predict(X[:, :3])
    with pytest.raises(ValueError, match="NaN"):
        est.transform(np.full_like(X, np.nan))
    with pytest.raises(ValueError, match="infinity"):
        est.score(X, np.full_like(Y, np.inf))
    with pytest.raises(ValueError, match="shape"):
        est.score(X, Y[:3])


def test_stream_fit_equals_array_fit():
    X, Y = _data(n=100)
    chunks = [(X[i:i + 30], Y[i:i + 30]) for i in range(0, 100, 30)]
    a = ClosedFormAlignment("centered").fit(iter(chunks))
    b = ClosedFormAlignment("centered").fit(X, Y)
    np.testing.assert_allclose(a.coef_, b.coef_, atol=1e-12)
    assert a.n_features_in_ == 5


def test_import_relaxedortho_does_not_load_sklearn_base():
    code = ("import sys, relaxedortho, relaxedortho.closed_form; relaxedortho.fit_closed_form; "
            "print('sklearn.base' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
