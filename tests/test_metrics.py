"""Retrieval metrics against a brute-force NumPy implementation, hand cases, and bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from relaxedortho import metrics as M


# ----------------------------------------------------------------------------------------- brute force

def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def brute_force(q, g, ql, gl, ks, loo):
    """Literal definitions: full similarity matrix, explicit ranking (ties: non-relevant first)."""
    S = _normalise(np.asarray(q, np.float64)) @ _normalise(np.asarray(g, np.float64)).T
    ql, gl = np.asarray(ql), np.asarray(gl)
    hits = dict.fromkeys(ks, 0)
    aps, without = [], 0
    for i in range(S.shape[0]):
        keep = np.arange(S.shape[1]) != i if loo else np.ones(S.shape[1], bool)
        s, rel = S[i, keep], gl[keep] == ql[i]
        if not rel.any():
            without += 1
            continue
        order = np.lexsort((rel.astype(int), -s))      # similarity descending, then non-relevant first
        r = rel[order]
        first = int(np.argmax(r)) + 1
        for k in ks:
            hits[k] += first <= k
        precision = np.cumsum(r) / np.arange(1, r.size + 1)
        aps.append(float((precision * r).sum() / r.sum()))
    n_eval = S.shape[0] - without
    if n_eval == 0:
        return None, None, without
    return {k: h / n_eval for k, h in hits.items()}, float(np.mean(aps)), without


def _exact_features(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Scaled signed basis vectors (and zeros): cosine similarities exactly in {-1, 0, 1}, many ties."""
    x = np.zeros((n, d))
    axis = rng.integers(0, d, n)
    scale = rng.choice([0.0, 0.5, 1.0, 2.0, 3.0, -1.0, -2.0], n)
    x[np.arange(n), axis] = scale
    return x


@st.composite
def retrieval_problems(draw):
    loo = draw(st.booleans())
    n_q = draw(st.integers(1, 25))
    n_g = n_q if loo else draw(st.integers(1, 30))
    d = draw(st.integers(1, 5))
    n_labels = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    exact = draw(st.booleans())
    rng = np.random.default_rng(seed)
    if exact:
        q = _exact_features(rng, n_q, d)
        g = q.copy() if loo else _exact_features(rng, n_g, d)
    else:
        q = rng.standard_normal((n_q, d))
        g = q.copy() if loo else rng.standard_normal((n_g, d))
    ql = rng.integers(0, n_labels, n_q)
    gl = ql.copy() if loo else rng.integers(0, n_labels, n_g)
    eff = n_g - int(loo)
    ks = tuple(sorted(set(draw(st.lists(st.integers(1, max(eff, 1)), min_size=1, max_size=3)))))
    chunk = draw(st.one_of(st.none(), st.integers(1, 30)))
    return q, g, ql, gl, ks, loo, chunk, exact, eff


@given(retrieval_problems())
def test_matches_brute_force(problem):
    q, g, ql, gl, ks, loo, chunk, exact, eff = problem
    if eff == 0:
        with pytest.raises(ValueError):
            M.cmc(q, g, ql, gl, ks, loo, chunk_size=chunk)
        return
    ref_cmc, ref_map, ref_without = brute_force(q, g, ql, gl, ks, loo)
    if ref_cmc is None:
        with pytest.raises(ValueError, match="no query has a relevant"):
            M.retrieval_report(q, g, ql, gl, ks, loo, chunk_size=chunk)
        return
    dtype = np.float32 if exact else np.float64       # exact features: float32 is exact too
    for batched in (False, True):                     # both counting paths (CPU row-wise, accelerator batched)
        M._BATCHED_COUNT = batched
        try:
            rep = M.retrieval_report(q.astype(dtype), g.astype(dtype), ql, gl, ks, loo, chunk_size=chunk)
        finally:
            M._BATCHED_COUNT = None
        assert rep.n_without_relevant == ref_without
        assert rep.n_queries == len(q)
        assert rep.cmc == pytest.approx(ref_cmc, abs=1e-12)
        assert rep.map == pytest.approx(ref_map, abs=1e-12)
    # the single-metric entry points agree with the joint report
    assert M.cmc(torch.from_numpy(q), torch.from_numpy(g), torch.from_numpy(ql), torch.from_numpy(gl), ks, loo,
                 chunk_size=chunk) == pytest.approx(ref_cmc, abs=1e-12)
    assert M.mean_average_precision(q, g, ql, gl, loo, chunk_size=chunk) == pytest.approx(ref_map, abs=1e-12)


@given(st.integers(0, 10_000), st.booleans())
def test_gallery_order_does_not_matter(seed, exact):
    """Pessimistic ties make the metrics independent of the gallery's order."""
    rng = np.random.default_rng(seed)
    q = _exact_features(rng, 12, 3) if exact else rng.standard_normal((12, 3))
    g = _exact_features(rng, 20, 3) if exact else rng.standard_normal((20, 3))
    ql, gl = rng.integers(0, 3, 12), rng.integers(0, 3, 20)
    gl[:3] = [0, 1, 2]
    perm = rng.permutation(20)
    a = M.retrieval_report(q, g, ql, gl, (1, 3, 7))
    b = M.retrieval_report(q, g[perm], ql, gl[perm], (1, 3, 7))
    assert a.cmc == b.cmc
    assert a.map == pytest.approx(b.map, abs=1e-12)


def test_chunk_size_invariance():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((97, 16))
    y = rng.integers(0, 7, 97)
    ref = M.retrieval_report(x, x, y, y, (1, 5, 10), leave_one_out=True, chunk_size=97)
    for chunk in (1, 2, 10, 32, 96, 200, None):
        rep = M.retrieval_report(x, x, y, y, (1, 5, 10), leave_one_out=True, chunk_size=chunk)
        assert rep.cmc == ref.cmc
        assert rep.map == pytest.approx(ref.map, abs=1e-12)


# ------------------------------------------------------------------------------------------- hand cases

def test_hand_case_ranks():
    q = np.array([[1.0, 0.0]])
    g = np.array([[0.9, 0.1], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    gl = [0, 1, 1, 0]
    # ranking: g1 (label 1), g0 (0), g3 (0), g2 (1): first relevant at rank 2, AP = (1/2 + 2/3) / 2
    assert M.cmc(q, g, [0], gl, topk=(1, 2, 4)) == {1: 0.0, 2: 1.0, 4: 1.0}
    assert M.mean_average_precision(q, g, [0], gl) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_ties_are_pessimistic():
    # constant gallery: every similarity equal, non-relevant items rank first
    g = np.ones((4, 3))
    out = M.retrieval_report(np.ones((1, 3)), g, [0], [1, 0, 1, 0], topk=(1, 2, 3))
    assert out.cmc == {1: 0.0, 2: 0.0, 3: 1.0}
    assert out.map == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_leave_one_out_excludes_self_and_counts_singletons():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [0.2, 0.9], [1.0, 0.05]])
    y = [0, 1, 1, 0]
    rep = M.retrieval_report(x, x, y, y, topk=1, leave_one_out=True)
    assert rep.cmc == {1: 1.0} and rep.map == 1.0 and rep.n_without_relevant == 0
    # without leave-one-out each query finds itself first
    assert M.cmc(x, x, y, y, topk=1) == {1: 1.0}
    # a class with a single member has no relevant item under leave-one-out: left out and counted
    y2 = [0, 1, 2, 0]
    rep2 = M.retrieval_report(x, x, y2, y2, topk=(1,), leave_one_out=True)
    assert rep2.n_without_relevant == 2 and rep2.n_evaluated == 2 and rep2.cmc == {1: 1.0}
    details = M.cmc(x, x, y2, y2, topk=(1,), leave_one_out=True, return_details=True)
    assert isinstance(details, M.RetrievalReport) and details.map is None and details.n_without_relevant == 2
    details = M.mean_average_precision(x, x, y2, y2, leave_one_out=True, return_details=True)
    assert details.cmc is None and details.map == 1.0


def test_query_label_absent_from_gallery_is_left_out():
    rep = M.retrieval_report(np.eye(3), np.eye(3), [0, 1, 9], [0, 1, 2], topk=1)
    assert rep.n_without_relevant == 1 and rep.cmc == {1: 1.0} and rep.map == 1.0


def test_cosine_not_l1_normalisation():
    # L1-normalised dot products would rank g1 = (1, 0) first; cosine ranks (1, 1) first
    q = np.array([[1.0, 0.9]])
    g = np.array([[1.0, 1.0], [1.0, 0.0]])
    assert M.cmc(q, g, [0], [0, 1], topk=1) == {1: 1.0}


def test_scale_invariance_and_string_labels():
    rng = np.random.default_rng(3)
    q, g = rng.standard_normal((10, 4)), rng.standard_normal((15, 4))
    ql, gl = rng.integers(0, 3, 10), rng.integers(0, 3, 15)
    ref = M.retrieval_report(q, g, ql, gl, (1, 2))
    scaled = M.retrieval_report(q * rng.uniform(0.1, 10, (10, 1)), g * rng.uniform(0.1, 10, (15, 1)),
                                np.array(["abc"[i] for i in ql]), ["abc"[i] for i in gl], (1, 2))
    assert scaled.cmc == ref.cmc and scaled.map == pytest.approx(ref.map, abs=1e-12)


def test_half_precision_inputs():
    rng = np.random.default_rng(4)
    x = _exact_features(rng, 30, 4)
    y = rng.integers(0, 3, 30)
    ref = M.retrieval_report(x, x, y, y, (1, 3), leave_one_out=True)
    for dt in (torch.float16, torch.bfloat16):
        t = torch.from_numpy(x).to(dt)
        rep = M.retrieval_report(t, t, torch.from_numpy(y), torch.from_numpy(y), (1, 3), leave_one_out=True)
        assert rep.cmc == ref.cmc and rep.map == pytest.approx(ref.map, abs=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.standard_normal((300, 32)))
    y = torch.from_numpy(rng.integers(0, 10, 300))
    ref = M.retrieval_report(x, x, y, y, (1, 5), leave_one_out=True, chunk_size=64)
    rep = M.retrieval_report(x.cuda(), x.cuda(), y.cuda(), y.cuda(), (1, 5), leave_one_out=True, chunk_size=64)
    assert rep.cmc == ref.cmc and rep.map == pytest.approx(ref.map, abs=1e-12)


# ------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, err, match", [
    (dict(query_labels=[0, 1]), ValueError, "query_labels has 2 entries"),
    (dict(gallery_labels=[0]), ValueError, "gallery_labels has 1 entries"),
    (dict(gallery=np.zeros((0, 2)), gallery_labels=[]), ValueError, "gallery is empty"),
    (dict(query=np.zeros((0, 2)), query_labels=[]), ValueError, "query is empty"),
    (dict(query=np.array([[np.nan, 0.0], [0.0, 1.0], [1.0, 1.0]])), ValueError, "query contains NaN"),
    (dict(gallery=np.array([[np.inf, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 2.0]])), ValueError, "gallery contains"),
    (dict(gallery=np.ones((4, 3))), ValueError, "same feature dimension"),
    (dict(topk=(1, 5)), ValueError, "larger than the gallery"),
    (dict(topk=(0,)), ValueError, "positive integers"),
    (dict(leave_one_out=True), ValueError, "same length"),
    (dict(query_labels=[0.0, 1.0, 1.0]), TypeError, "query_labels"),
    (dict(query=np.ones((3, 2), dtype=np.int64)), TypeError, "query"),
    (dict(chunk_size=0), ValueError, "chunk_size"),
    (dict(query_labels=[7, 8, 9]), ValueError, "no query has a relevant"),
])
def test_bad_input(kwargs, err, match):
    args = dict(query=np.eye(3, 2), gallery=np.ones((4, 2)), query_labels=[0, 1, 1], gallery_labels=[0, 1, 0, 1],
                topk=(1, 4))
    args.update(kwargs)
    with pytest.raises(err, match=match):
        M.cmc(**args)


def test_k_larger_than_gallery_with_leave_one_out():
    x = np.eye(3)
    with pytest.raises(ValueError, match="leave-one-out"):
        M.cmc(x, x, [0, 0, 1], [0, 0, 1], topk=3, leave_one_out=True)
    assert M.cmc(x, x, [0, 0, 1], [0, 0, 1], topk=2, leave_one_out=True) == {2: 1.0}


# ------------------------------------------------------------------------------------------ compatibility

def test_compatibility_criterion_ac_am_hand():
    Mx = np.array([[0.50, 0.10, 0.00],
                   [0.55, 0.60, 0.20],
                   [0.45, 0.65, 0.70]])
    C = M.empirical_compatibility(Mx)
    # (1,0): 0.55 > 0.50 yes; (2,0): 0.45 > 0.50 no; (2,1): 0.65 > 0.60 yes; upper triangle never
    assert C.tolist() == [[False, False, False], [True, False, False], [False, True, False]]
    assert M.average_compatibility(Mx) == pytest.approx(2 / 3)
    assert M.average_multimodel_accuracy(Mx) == pytest.approx((0.50 + 0.55 + 0.60 + 0.45 + 0.65 + 0.70) / 6)
    # equality is not compatibility (strict)
    assert not M.empirical_compatibility([[0.5, 0.0], [0.5, 0.9]])[1, 0]
    with pytest.raises(ValueError, match="at least 2"):
        M.average_compatibility([[0.5]])
    with pytest.raises(ValueError, match="square"):
        M.average_multimodel_accuracy(np.ones((2, 3)))


def test_compatibility_matrix_entries_are_cross_tests():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 5, 60)
    feats = [rng.standard_normal((60, 8)) for _ in range(3)]
    gal = [f + 0.1 * rng.standard_normal(f.shape) for f in feats]
    mat = M.compatibility_matrix(feats, gal, y, y, metric="map")
    for i in range(3):
        for j in range(3):
            assert mat[i, j] == pytest.approx(M.mean_average_precision(feats[i], gal[j], y, y))
    top3 = M.compatibility_matrix(feats, gal, y, y, metric="top3", lower_only=True, leave_one_out=True)
    assert np.isnan(top3[0, 1]) and top3[2, 1] == pytest.approx(
        M.cmc(feats[2], gal[1], y, y, (3,), leave_one_out=True)[3])
    custom = M.compatibility_matrix(feats, gal, y, y, metric=lambda q, g, ql, gl, loo: 0.25)
    assert np.all(custom == 0.25)
    with pytest.raises(ValueError, match="metric"):
        M.compatibility_matrix(feats, gal, y, y, metric="top")
    with pytest.raises(ValueError, match="same number"):
        M.compatibility_matrix(feats, gal[:2], y, y)


def test_compatibility_matrix_dimension_mismatch_is_nan_and_from_models():
    x = np.eye(4)
    y = [0, 1, 2, 3]
    mat = M.compatibility_matrix([x, np.eye(4, 3)], [x, np.eye(4, 3)], y, y)
    # version 1 embeds item 3 as the zero vector: similarity 0 to everything, ranked last among ties
    assert mat[0, 0] == 1.0 and mat[1, 1] == 0.75 and np.isnan(mat[0, 1]) and np.isnan(mat[1, 0])
    old = torch.nn.Linear(4, 4)
    new = lambda t: old(t) * 2.0 + 1e-3   # noqa: E731  (a "compatible" new model)
    xt = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    yt = torch.arange(20) % 4
    mat = M.compatibility_matrix_from_models([old, new], xt, xt, yt, yt, batch_size=7, leave_one_out=True)
    ref = M.cmc(old(xt).detach(), old(xt).detach(), yt, yt, (1,), leave_one_out=True)[1]
    assert mat[0, 0] == pytest.approx(ref)
    assert mat.shape == (2, 2)


# ------------------------------------------------------------------------------------------- backfilling

def test_backfilling_endpoints_are_cross_and_new_tests():
    rng = np.random.default_rng(11)
    y = rng.integers(0, 6, 80)
    new_q = rng.standard_normal((80, 10))
    new_g = new_q + 0.2 * rng.standard_normal((80, 10))
    old_g = rng.standard_normal((80, 10))
    for order in ("random", "distance", rng.permutation(80)):
        curve = M.backfilling_curve(new_q, old_g, new_g, y, y, order=order, metric="map", num_points=6,
                                    leave_one_out=True)
        assert curve.values[0] == pytest.approx(M.mean_average_precision(new_q, old_g, y, y, True))
        assert curve.values[-1] == pytest.approx(M.mean_average_precision(new_q, new_g, y, y, True))
        np.testing.assert_allclose(curve.fractions, np.linspace(0, 1, 6))
        trap = np.sum((curve.values[1:] + curve.values[:-1]) / 2 * 0.2)
        assert curve.area == pytest.approx(trap)
        assert sorted(curve.order.tolist()) == list(range(80))


def test_backfilling_middle_point_and_constant_area():
    q = np.eye(2)
    c = M.backfilling_curve(q, -q, q, [0, 1], [0, 1], order=[1, 0], fractions=[0.0, 0.5, 1.0])
    # after re-embedding item 1 only, query 1 finds it, query 0 does not
    assert c.values.tolist() == [0.0, 0.5, 1.0] and c.area == pytest.approx(0.5)
    same = M.backfilling_curve(q, q, q, [0, 1], [0, 1])
    assert same.area == pytest.approx(1.0) and np.all(same.values == 1.0)


def test_backfilling_orders():
    g = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [1.0, -0.1]])
    # class 0 = {0, 2, 3}: item 0 sits at the mean direction; class 1 = {1}: distance 0
    order = M.backfilling_order(g, [0, 1, 0, 0], "distance")
    assert order.tolist()[:2] in ([2, 3], [3, 2]) and order.tolist()[2:] == [0, 1]
    a = M.backfilling_order(g, [0, 1, 0, 0], "random", seed=5)
    assert a.tolist() == M.backfilling_order(g, [0, 1, 0, 0], "random", seed=5).tolist()
    for bad in ([0, 1, 2], [0, 0, 1, 2], "nearest", [0.0, 1.0, 2.0, 3.0]):
        with pytest.raises(ValueError):
            M.backfilling_order(g, [0, 1, 0, 0], bad)
    with pytest.raises(ValueError, match="same shape"):
        M.backfilling_curve(g, g, g[:3], [0, 1, 0, 0], [0, 1, 0, 0])
    with pytest.raises(ValueError, match="fractions"):
        M.backfilling_curve(g, g, g, [0, 1, 0, 0], [0, 1, 0, 0], fractions=[0.5, 0.2])
    assert math.isfinite(M.backfilling_curve(g, g, g, [0, 1, 0, 0], [0, 1, 0, 0], fractions=[0.3]).area)


# ----------------------------------------------------------------------------------- scale invariance
# Cosine similarity is invariant to a positive scale of any row; normalising must not overflow or underflow
# (float32 rows of size 1e20 once gave top-1 0.0, rows of size 1e-30 gave 0.933, issue 11 defect 5).
_EXPONENTS = {np.float32: 30, np.float64: 300}


def _separated_problem(seed: int):
    """Gaussian features whose float64 similarities are at least 1e-3 apart within each row, so rounding
    cannot reorder a ranking and the metrics must equal the brute force exactly."""
    rng = np.random.default_rng(seed)
    q, g = rng.standard_normal((9, 5)), rng.standard_normal((14, 5))
    ql, gl = rng.integers(0, 3, 9), rng.integers(0, 3, 14)
    gl[:3] = [0, 1, 2]
    S = _normalise(q) @ _normalise(g).T
    gaps = np.diff(np.sort(S, axis=1), axis=1)
    return q, g, ql, gl, float(gaps.min())


def _scaled(x: np.ndarray, dtype, exponents: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (rounded to ``dtype`` first) times 10**exponent, rounded once more to ``dtype``."""
    x = x.astype(dtype).astype(np.float64)
    return (x * 10.0 ** exponents[:, None]).astype(dtype)


@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from([np.float32, np.float64]),
       exponent=st.integers(-300, 300), per_row=st.booleans())
def test_cosine_metrics_are_scale_invariant_for_every_finite_scale(seed, dtype, exponent, per_row):
    q, g, ql, gl, gap = _separated_problem(seed)
    assume(gap >= 1e-3)
    top = _EXPONENTS[dtype]
    e = max(-top, min(top, exponent))
    rng = np.random.default_rng(seed)
    eq = rng.integers(-top, top + 1, len(q)) if per_row else np.full(len(q), e)
    eg = rng.integers(-top, top + 1, len(g)) if per_row else np.full(len(g), e)
    qs, gs = _scaled(q, dtype, eq), _scaled(g, dtype, eg)
    assert np.isfinite(qs).all() and np.isfinite(gs).all()
    ref_cmc, ref_map, _ = brute_force(q.astype(dtype), g.astype(dtype), ql, gl, (1, 3), False)
    rep = M.retrieval_report(qs, gs, ql, gl, (1, 3))
    assert rep.cmc == pytest.approx(ref_cmc, abs=1e-12)
    assert rep.map == pytest.approx(ref_map, abs=1e-12)
    # every cosine-based entry point: the compatibility matrix and the backfilling curve and order
    cm = M.compatibility_matrix([qs, q.astype(dtype)], [gs, g.astype(dtype)], ql, gl, metric="map")
    np.testing.assert_allclose(cm, np.full((2, 2), ref_map), atol=1e-12)
    curve = M.backfilling_curve(qs, g.astype(dtype), gs, ql, gl, order="distance", metric="top3",
                                fractions=[0.0, 0.5, 1.0])
    np.testing.assert_allclose(curve.values, ref_cmc[3], atol=1e-12)
    # the order comes from the old gallery as passed (g rounded to dtype); float64 g can differ at near ties of
    # the class-mean distances, which the similarity gap above does not separate
    assert curve.order.tolist() == M.backfilling_order(g.astype(dtype), gl, "distance").tolist()


@pytest.mark.parametrize("dtype, scale", [(np.float32, 1e20), (np.float32, 1e-30), (np.float32, 1e30),
                                          (np.float64, 1e200), (np.float64, 1e-300)])
def test_issue_reproducer_extreme_feature_scale(dtype, scale):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((30, 8)).astype(np.float32)
    g = q + 0.01 * rng.standard_normal((30, 8)).astype(np.float32)
    y = np.arange(30) % 5
    ref = M.retrieval_report(q, g, y, y, (1,))
    assert ref.cmc == {1: 1.0}
    rep = M.retrieval_report(q.astype(dtype) * scale, g.astype(dtype) * scale, y, y, (1,))
    assert rep.cmc == ref.cmc and rep.map == pytest.approx(ref.map, abs=1e-6)
