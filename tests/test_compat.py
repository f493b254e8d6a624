"""relaxedortho.compat: each method's defining property, and the compat-bench report."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

from relaxedortho.compat import (BT2Model, BasisTransformation, FCTTransformation, OCAModel, bct_loss, bt2_loss,
                                 class_means, fastfill_loss, fit_fastfill, fit_fct, fit_slerp, oca_loss, slerp,
                                 synthesized_classifier, train_module, uncertainty_order)
from relaxedortho.compat.protocol import ProtocolConfig, SmallCNN
from relaxedortho.losses import influence_loss


def _tol(dtype):
    return 1e-5 if dtype == torch.float32 else 1e-12


def _anisotropic(n, d, gen, dtype=torch.float64, offset=3.0):
    """Rows with a power-law spectrum and a large common offset (embedding-like)."""
    scales = torch.arange(1, d + 1, dtype=torch.float64) ** -1.0
    return (torch.randn(n, d, generator=gen, dtype=torch.float64) * scales + offset).to(dtype)


# ------------------------------------------------------------------------------------------------ SLERP
@given(d=st.integers(2, 40), n=st.integers(1, 20), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from([torch.float32, torch.float64]), alpha=st.floats(0.0, 1.0))
def test_slerp_endpoints_and_geodesic(d, n, seed, dtype, alpha):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype) * 1e3
    v = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype) * 1e-3
    un, vn = F.normalize(u.double(), dim=1), F.normalize(v.double(), dim=1)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert torch.allclose(slerp(u, v, 0.0).double(), un, atol=tol)
    assert torch.allclose(slerp(u, v, 1.0).double(), vn, atol=tol)
    q = slerp(u, v, alpha).double()
    theta = torch.acos((un * vn).sum(1).clamp(-1, 1))
    # unit norm, in the plane of u and v, at angle alpha*theta from u and (1-alpha)*theta from v
    assert torch.allclose(q.norm(dim=1), torch.ones(n, dtype=torch.float64), atol=tol)
    assert torch.allclose((q * un).sum(1), torch.cos(alpha * theta), atol=10 * tol)
    assert torch.allclose((q * vn).sum(1), torch.cos((1 - alpha) * theta), atol=10 * tol)
    assert q.dtype == torch.float64 or slerp(u, v, alpha).dtype == dtype


def test_slerp_close_and_antipodal():
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    v = torch.tensor([[1.0, 1e-9], [1.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(slerp(u, v, 0.3), F.normalize(0.7 * u + 0.3 * v, dim=1), atol=1e-15)
    with pytest.warns(RuntimeWarning, match="antipodal"):
        slerp(u[:1], -u[:1], 0.3)
    with pytest.raises(ValueError, match="alpha"):
        slerp(u, v, 1.5)
    with pytest.raises(ValueError, match="same shape"):
        slerp(u, v[:1], 0.5)


def _paper_slerp_query(new_s, old_s, new_q, old_q, alpha):
    """Independent computation, as the paper's code: zero-pad the old space to d = max(d_new, d_old), square
    Procrustes by a full SVD, SLERP in R^d, then the old coordinates."""
    d_new, d_old = new_s.shape[1], old_s.shape[1]
    d = max(d_new, d_old)
    pad = lambda x: F.pad(F.normalize(x, dim=1), (0, d - x.shape[1]))  # noqa: E731
    V, U = F.normalize(new_s, dim=1), pad(old_s)
    P, _, Qt = torch.linalg.svd(V.T @ U, full_matrices=False)
    R = P @ Qt
    u, v = pad(old_q), F.normalize(new_q, dim=1) @ R
    cos = (u * v).sum(1, keepdim=True).clamp(-1, 1)
    th = torch.acos(cos)
    q = (torch.sin((1 - alpha) * th) * u + torch.sin(alpha * th) * v) / torch.sin(th)
    return F.normalize(q[:, :d_old], dim=1)


@pytest.mark.parametrize("d_new,d_old", [(12, 6), (6, 12), (8, 8)])
@pytest.mark.parametrize("alpha", [0.0, 0.35, 1.0])
def test_slerp_rule_matches_the_papers_padded_computation(d_new, d_old, alpha):
    g = torch.Generator().manual_seed(d_new * 7 + d_old)
    old = _anisotropic(300, d_old, g)
    A = torch.linalg.qr(torch.randn(max(d_new, d_old), max(d_new, d_old), generator=g, dtype=torch.float64))[0]
    new = F.pad(old, (0, max(0, d_new - d_old)))[:, :max(d_new, d_old)] @ A
    new = new[:, :d_new] + 0.3 * torch.randn(300, d_new, generator=g, dtype=torch.float64)
    rule = fit_slerp(new[:200], old[:200], alpha=alpha)
    ours = F.normalize(rule.query(old[200:], new[200:]), dim=1)
    ref = _paper_slerp_query(new[:200], old[:200], new[200:], old[200:], alpha)
    assert torch.allclose(ours, ref, atol=1e-10)
    # the endpoints: the old query itself, and the (normalised) Procrustes image of the new query
    if alpha == 0.0:
        assert torch.allclose(ours, F.normalize(old[200:], dim=1), atol=1e-12)
    if alpha == 1.0:
        assert torch.allclose(ours, F.normalize(rule.aligned(new[200:]), dim=1), atol=1e-12)


def test_fit_slerp_chooses_alpha_on_the_support_set():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat_interleave(30)
    centres = torch.randn(10, 16, generator=g, dtype=torch.float64) * 3
    clean = centres[labels] + 0.2 * torch.randn(300, 16, generator=g, dtype=torch.float64)
    noisy_old = clean + 4.0 * torch.randn(300, 16, generator=g, dtype=torch.float64)
    R = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))[0]
    rule = fit_slerp(clean @ R, noisy_old, labels)           # the new model is far better: move towards it
    assert rule.alpha >= 0.5 and rule.support_scores[rule.alpha] == max(rule.support_scores.values())
    rule = fit_slerp(noisy_old @ R, clean, labels)           # the new model is worse: stay near the old query
    assert rule.alpha <= 0.5
    with pytest.raises(ValueError, match="labels"):
        fit_slerp(clean, clean)
    with pytest.raises(ValueError, match="paired"):
        fit_slerp(clean, clean[:5], alpha=0.5)


# ------------------------------------------------------------------------------------------------ FCT / FastFill
def test_fct_recovers_a_planted_linear_map():
    g = torch.Generator().manual_seed(1)
    d_old, d_new = 6, 10
    X = _anisotropic(3000, d_old, g, torch.float32, offset=2.0)
    A = torch.randn(d_old, d_new, generator=g) * 2.0
    A[:, 0] *= -1
    b = torch.randn(d_new, generator=g) * 5
    Y = X @ A + b
    h = fit_fct(X[:2500], Y[:2500], hidden=64, epochs=60, batch_size=128, lr=3e-3, weight_decay=0.0, seed=0)
    with torch.no_grad():
        pred = h(X[2500:])
    resid = ((pred - Y[2500:]) ** 2).sum() / ((Y[2500:] - Y[2500:].mean(0)) ** 2).sum()
    assert float(resid) < 0.02          # R² > 0.98 on held-out rows
    # the planted map is not the identity: without training the error is large
    with torch.no_grad():
        untrained = FCTTransformation(d_old, d_new, hidden=64).eval()(X[2500:])
    assert float(((untrained - Y[2500:]) ** 2).sum() / ((Y[2500:] - Y[2500:].mean(0)) ** 2).sum()) > 0.5


def test_fct_side_information_and_errors():
    h = FCTTransformation(3, 4, side_dim=2, hidden=8).eval()
    assert h(torch.randn(5, 3), torch.randn(5, 2)).shape == (5, 4)
    with pytest.raises(ValueError, match="side information"):
        h(torch.randn(5, 3))
    with pytest.raises(ValueError, match="side_dim"):
        FCTTransformation(3, 4, side_dim=-1)
    with pytest.raises(ValueError, match="paired"):
        fit_fct(torch.randn(5, 3), torch.randn(4, 3), epochs=1)


def test_fastfill_loss_formula():
    g = torch.Generator().manual_seed(0)
    h, t = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(7, 5, generator=g, dtype=torch.float64)
    s = torch.randn(7, generator=g, dtype=torch.float64)
    logits, y = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randint(0, 3, (7,), generator=g)
    got = fastfill_loss(h, s, t, logits=logits, labels=y, mu_disc=0.7, mu_uncertainty=0.5, label_smoothing=0.1)
    # independent: label-smoothed CE by hand
    logp = torch.log_softmax(logits, 1)
    ce = -(0.9 * logp[torch.arange(7), y] + 0.1 * logp.mean(1))
    ell = ((h - t) ** 2).mean(1) + 0.7 * ce
    want = (0.5 * torch.exp(-s) * ell + 0.5 * s).mean()
    assert torch.allclose(got, want, atol=1e-14)
    # the optimal log-variance of one item is log(ell / (2 mu))
    s_opt = torch.log(ell / (2 * 0.5)).detach().requires_grad_(True)
    loss = fastfill_loss(h, s_opt, t, logits=logits, labels=y, mu_disc=0.7)
    (grad,) = torch.autograd.grad(loss, s_opt)
    assert float(grad.abs().max()) < 1e-12


def test_fastfill_uncertainty_ranks_noisier_items_higher():
    """Heteroscedastic planted data: a linear old -> new map plus noise of standard deviation 0.8 on the items
    with a positive first old coordinate and 0.02 on the others. The predicted log-variance must separate the
    two groups on held-out items, and the backfilling order must re-embed the noisy ones first."""
    g = torch.Generator().manual_seed(2)
    n, d_old, d_new = 4000, 6, 8
    X = torch.randn(n, d_old, generator=g)
    noisy = X[:, 0] > 0
    A = torch.randn(d_old, d_new, generator=g)
    sigma = torch.where(noisy, 0.8, 0.02)[:, None]
    Y = X @ A + sigma * torch.randn(n, d_new, generator=g)
    h = fit_fastfill(X[:3000], Y[:3000], hidden=64, epochs=20, batch_size=64, lr=3e-3, weight_decay=0.0, seed=0)
    with torch.no_grad():
        _, s = h(X[3000:])
    test_noisy = noisy[3000:]
    auc = float((s[test_noisy][:, None] > s[~test_noisy][None, :]).double().mean())
    assert auc > 0.9
    order = uncertainty_order(s)
    half = int(test_noisy.sum()) // 2
    assert float(test_noisy[order[:half]].double().mean()) > 0.95


def test_uncertainty_order_is_descending_and_stable():
    s = torch.tensor([0.0, 3.0, 3.0, -1.0, 2.0])
    assert uncertainty_order(s).tolist() == [1, 2, 4, 0, 3]


# ------------------------------------------------------------------------------------------------ BCT
def test_synthesized_classifier_and_class_means():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = torch.arange(4).repeat(10)
    means = class_means(feats, y, 4)
    for c in range(4):
        assert torch.allclose(means[c], feats[y == c].mean(0), atol=1e-15)
    W, b = torch.randn(2, 3, generator=g, dtype=torch.float64), torch.tensor([0.5, -1.0], dtype=torch.float64)
    Ws, bs = synthesized_classifier(W, b, [2, 0], feats, y, 4)
    assert torch.equal(Ws[2], W[0]) and torch.equal(Ws[0], W[1])
    assert torch.allclose(Ws[1], means[1]) and torch.allclose(Ws[3], means[3])
    assert bs.tolist() == [-1.0, 0.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="no rows for class"):
        class_means(feats, y, 5)
    with pytest.raises(ValueError, match="must agree"):
        synthesized_classifier(W, b, [0], feats, y, 4)


def test_bct_influence_term_is_zero_when_the_new_model_equals_the_old():
    """The influence term charges the new model only for departing from the old one: with new features equal
    to the old ones on the old classes its excess over the old model's own loss is exactly zero (and with a
    confident old classifier the term itself vanishes); any change of the features is charged."""
    g = torch.Generator().manual_seed(3)
    centres = torch.eye(4, dtype=torch.float64)[:3] * 50.0        # a confident old classifier on 3 old classes
    y = torch.arange(3).repeat(20)
    old = centres[y] + 0.1 * torch.randn(60, 4, generator=g, dtype=torch.float64)
    W, bias = centres.clone(), torch.zeros(3, dtype=torch.float64)
    new = old.clone().requires_grad_(True)
    term = influence_loss(new, y, (W, bias))
    own = torch.nn.functional.cross_entropy(old @ W.T, y)
    assert float((term - own).detach()) == 0.0
    assert float(term.detach()) < 1e-12
    R = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))[0]
    assert float(influence_loss(old @ R, y, (W, bias))) > 1.0
    logits = torch.randn(60, 3, generator=g, dtype=torch.float64)
    total = bct_loss(logits, new, y, (W, bias), influence_weight=2.0)
    assert torch.allclose(total, torch.nn.functional.cross_entropy(logits, y) + 2.0 * term)


# ------------------------------------------------------------------------------------------------ OCA
def _planted_images(n=240, classes=4, side=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n // classes)
    protos = torch.rand(classes, 1, side, side, generator=g)
    X = protos[y] + 0.1 * torch.randn(n, 1, side, side, generator=g)
    return X, y


def test_oca_layer_is_orthogonal_after_training():
    X, y = _planted_images()
    torch.manual_seed(0)
    model = OCAModel(SmallCNN(8, (4, 8), 16, 12, 4), old_dim=5, n_classes=4)
    W_old = (torch.randn(4, 5), torch.zeros(4))
    protos = torch.randn(4, 5)
    w0 = model.orthogonal.weight.detach().clone()
    train_module(model, lambda m, xb, yb: oca_loss(m, xb, yb, W_old, protos), [X, y], epochs=5, batch_size=32,
                 lr=1e-2, seed=0)
    T = model.orthogonal.weight.detach().double()
    assert float(torch.linalg.matrix_norm(T.T @ T - torch.eye(12, dtype=torch.float64))) < 1e-5
    assert float((T - w0.double()).abs().max()) > 1e-3             # it trained
    # the compatible part is the first old_dim coordinates of the embedding
    z = F.normalize(model.features(X[:7]).detach(), dim=1)
    assert torch.allclose(model.embed(X[:7]), z, atol=1e-6)
    assert torch.allclose(model.embed_compatible(X[:7]), F.normalize(model.features(X[:7]).detach()[:, :5], dim=1),
                          atol=1e-6)
    with pytest.raises(ValueError, match="must exceed old_dim"):
        OCAModel(SmallCNN(8, (4, 8), 16, 5, 4), old_dim=5, n_classes=4)


def test_oca_loss_terms():
    X, y = _planted_images(n=16)
    torch.manual_seed(0)
    model = OCAModel(SmallCNN(8, (4, 8), 16, 6, 4), old_dim=3, n_classes=4)
    W_old, protos = torch.randn(4, 3), torch.randn(4, 3)
    z = model.features(X)
    ce = F.cross_entropy(model(X), y)
    infl = influence_loss(z[:, :3], y, W_old)
    cos = 1 - F.cosine_similarity(z[:, :3], F.normalize(protos, dim=1)[y], dim=1).mean()
    got = oca_loss(model, X, y, W_old, protos, influence_weight=0.5, prototype_weight=2.0)
    assert torch.allclose(got, ce + 0.5 * infl + 2.0 * cos, atol=1e-6)


# ------------------------------------------------------------------------------------------------ BT²
def test_bt2_basis_is_orthogonal_and_the_compatible_part_matches_the_old_space():
    X, y = _planted_images(n=320, seed=1)
    torch.manual_seed(1)
    old_model = SmallCNN(8, (4, 8), 16, 6, 4)
    new_model = SmallCNN(8, (4, 8), 16, 10, 4)
    with torch.no_grad():
        old, new = old_model.embed(X), new_model.embed(X)
    protos = F.normalize(class_means(old, y, 4), dim=1)
    model = BT2Model(SmallCNN(8, (4, 8), 32, 10, 4), old_dim=6, extra=3)
    with torch.no_grad():
        before = F.cosine_similarity(model(X)[2], old, dim=1).mean()
    train_module(model, lambda m, xb, yb, ob, nb: bt2_loss(m, xb, yb, ob, nb, protos), [X, y, old, new],
                 epochs=40, batch_size=64, lr=1e-2, seed=1)
    M = model.basis.basis_matrix()
    assert float(torch.linalg.matrix_norm(M.T @ M - torch.eye(13, dtype=torch.float64))) < 1e-5
    with torch.no_grad():
        _, h, c, e = model(X)
        after = F.cosine_similarity(c, old, dim=1).mean()
        a = F.normalize(model.basis.extra_head(F.relu(h)), dim=1)
        stacked = torch.cat([a, 3.0 * F.normalize(h, dim=1)], dim=1).double()
    assert float(after) > 0.95 and float(after) > float(before) + 0.1
    # [c, e] is the orthogonal change of basis of [a, C h]: the information of h is kept
    assert torch.allclose(torch.cat([c, e], dim=1).double(), stacked @ M.T, atol=1e-5)
    assert torch.allclose(torch.cat([c, e], dim=1).norm(dim=1), stacked.norm(dim=1).float(), atol=1e-5)


def test_bt2_shapes_and_errors():
    bt = BasisTransformation(4, 6, 2)
    c, e = bt(torch.randn(3, 4))
    assert c.shape == (3, 6) and e.shape == (3, 0)
    with pytest.raises(ValueError, match="at least old_dim"):
        BasisTransformation(4, 6, 1)


# ------------------------------------------------------------------------------------------------ training loop
def test_train_module_errors():
    m = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match="rows"):
        train_module(m, lambda mod, a, b: (mod(a) - b).pow(2).mean(), [torch.randn(4, 2), torch.randn(3, 1)],
                     epochs=1, batch_size=2, lr=1e-2)
    with pytest.raises(ValueError, match="loss became"):
        train_module(m, lambda mod, a: mod(a).sum() * math.inf, [torch.randn(4, 2)], epochs=1, batch_size=2,
                     lr=1e-2)
    with pytest.raises(ValueError, match="epochs"):
        train_module(m, lambda mod, a: mod(a).sum(), [torch.randn(4, 2)], epochs=0, batch_size=2, lr=1e-2)


# ------------------------------------------------------------------------------------------------ the benchmark
TINY = dict(dataset="digits", old_width=8, new_width=12, old_channels=(2, 4), new_channels=(4, 4), old_hidden=8,
            new_hidden=12, epochs=2, map_epochs=2, fct_hidden=16, bt2_extra=2, batch_size=128, map_batch=256)

NAMES = ("procrustes", "lambda", "fct", "fastfill", "slerp", "bct", "oca", "bt2")


def _check_report(rep):
    assert set(rep["baselines"]) >= {"old_old", "new_new"}
    for b in rep["baselines"].values():
        assert all(0.0 <= b[k] <= 1.0 for k in ("top1", "top5", "map"))
    assert set(NAMES) <= set(rep["methods"])
    for name in NAMES:
        m = rep["methods"][name]
        for k in ("top1_new_old", "map_new_old", "top1_new_new", "top5_new_old", "map_new_new"):
            assert isinstance(m[k], float) and 0.0 <= m[k] <= 1.0, (name, k, m[k])
        assert isinstance(m["compatible"], bool)
        grp = m["top1_new_old_by_group"]
        assert 0.0 <= grp["old_classes"] <= 1.0 and 0.0 <= grp["new_classes"] <= 1.0
        assert m["compatible"] == (m["top1_new_old"] > rep["baselines"]["old_old"]["top1"]
                                   and m["map_new_old"] > rep["baselines"]["old_old"]["map"])
    bf = rep["backfilling"]
    assert len(bf["fastfill_uncertainty"]["values"]) == len(bf["fractions"]) == 11
    # the curve starts at the transformed gallery and ends at the fully re-embedded one
    assert bf["fastfill_uncertainty"]["values"][0] == pytest.approx(rep["methods"]["fastfill"]["top1_new_old"])
    assert bf["fastfill_uncertainty"]["values"][-1] == pytest.approx(rep["baselines"]["new_new"]["top1"])
    assert sorted(rep["ranking"]) == sorted(rep["methods"])
    # top-1 over all queries is the query-weighted mean of the two class groups
    n_old_q, n_q = rep["n_query_old_classes"], rep["n_query"]
    for m in list(rep["methods"].values()) + [rep["baselines"]["old_old"]]:
        grp = m.get("top1_new_old_by_group") or m["top1_by_group"]
        top1 = m.get("top1_new_old", m.get("top1"))
        assert top1 == pytest.approx((n_old_q * grp["old_classes"] + (n_q - n_old_q) * grp["new_classes"]) / n_q)


def test_compat_bench_report(tmp_path):
    from relaxedortho.compat import run_compat_bench

    rep = run_compat_bench(tmp_path / "o", config=ProtocolConfig(**TINY), progress=False)
    _check_report(rep)
    on_disk = json.loads((tmp_path / "o" / "report.json").read_text())
    _check_report(on_disk)
    assert (tmp_path / "o" / "compat_tradeoff.png").stat().st_size > 1000
    assert rep["methods"]["oca"]["orthogonality_error"] < 1e-4
    assert rep["methods"]["bt2"]["orthogonality_error"] < 1e-4


def test_compat_bench_cli(tmp_path, monkeypatch, capsys):
    from relaxedortho.cli import main
    from relaxedortho.compat import protocol

    monkeypatch.setattr(protocol, "protocol_config",
                        lambda dataset, quick=False: ProtocolConfig(**{**TINY, "dataset": dataset}))
    import relaxedortho.compat.bench as bench

    monkeypatch.setattr(bench, "protocol_config", protocol.protocol_config)
    rc = main(["compat-bench", "--out", str(tmp_path / "c"), "--quick", "--dataset", "auto", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "ranking by new->old top-1" in out
    _check_report(json.loads((tmp_path / "c" / "report.json").read_text()))
    rc = main(["compat-bench", "--out", str(tmp_path / "d"), "--dataset", "fashion-mnist",
               "--data-dir", str(tmp_path / "nowhere"), "--quiet"])
    assert rc == 1
    assert "Fashion-MNIST files not found" in capsys.readouterr().err


def test_resolve_dataset(tmp_path):
    from relaxedortho.compat.protocol import protocol_config, resolve_dataset

    assert resolve_dataset("auto", tmp_path, quick=False)[0] == "digits"
    assert "not found" in resolve_dataset("auto", tmp_path)[1]
    assert resolve_dataset("auto", None, quick=True) == ("digits", "--quick with dataset 'auto' uses the bundled "
                                                                    "digits")
    assert resolve_dataset("fashion-mnist") == ("fashion-mnist", None)
    with pytest.raises(ValueError, match="dataset"):
        resolve_dataset("mnist")
    with pytest.raises(ValueError, match="dataset"):
        protocol_config("auto")
    assert protocol_config("digits", quick=True).epochs < protocol_config("digits").epochs


def test_no_warnings_from_slerp_on_normal_queries():
    g = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rule = fit_slerp(torch.randn(50, 6, generator=g), torch.randn(50, 4, generator=g), alpha=0.5)
        q = rule.query(torch.randn(5, 4, generator=g), torch.randn(5, 6, generator=g))
    assert q.shape == (5, 4) and np.isfinite(q.numpy()).all()
