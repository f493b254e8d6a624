"""Tests of relaxedortho.transfer: task vectors, the aligned update, merging, planted recovery, the demo."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from relaxedortho import AffineMap, LambdaOrthoLinear, OrthogonalLinear, StiefelLinear
from relaxedortho.linalg import random_orthogonal
from relaxedortho.transfer import (TransferredLinear, apply_task_vector, merge_transferred, procrustes_weight,
                                   run_transfer_demo, soft_orthogonal_map, task_vector, train_transfer_maps,
                                   transfer_maps, transfer_task_vector)
from relaxedortho.transfer.aligned_update import layer_inputs


def mlp(d_in=5, h=4, c=3, seed=0, dtype=torch.float64, act=nn.ReLU):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, h), act(), nn.Linear(h, h), act(), nn.Linear(h, c)).to(dtype)


def perturbed(model, seed, eps=0.3):
    out = mlp(seed=0)
    out.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(eps * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return out


def mlp_maps(u1, u2):
    return {"0": (None, u1), "2": (u1, u2), "4": (u2, None)}


# --------------------------------------------------------------------------------------------- task vectors
def test_task_vector_is_the_difference_for_modules_and_state_dicts():
    pre = mlp(seed=0)
    ft = perturbed(pre, 1)
    tv = task_vector(ft, pre)
    assert set(tv) == set(pre.state_dict())
    for k, v in tv.items():
        assert torch.equal(v, ft.state_dict()[k] - pre.state_dict()[k])
    tv2 = task_vector(ft.state_dict(), pre.state_dict())
    assert all(torch.equal(tv[k], tv2[k]) for k in tv)
    # applying it back to the pre-trained model gives the fine-tuned model
    back = apply_task_vector(pre, tv)
    for k, v in back.state_dict().items():
        torch.testing.assert_close(v, ft.state_dict()[k], rtol=0, atol=1e-15)


def test_task_vector_skips_integer_buffers():
    a = {"w": torch.ones(2), "count": torch.tensor(3)}
    b = {"w": torch.zeros(2), "count": torch.tensor(1)}
    assert set(task_vector(a, b)) == {"w"}


def test_mismatched_keys_error_lists_them():
    a = {"layer.weight": torch.zeros(2, 2), "only_a": torch.zeros(1), "x": torch.zeros(3)}
    b = {"layer.weight": torch.zeros(2, 2), "only_b": torch.zeros(1), "x": torch.zeros(4)}
    with pytest.raises(ValueError) as e:
        task_vector(a, b)
    msg = str(e.value)
    assert "only_a" in msg and "only_b" in msg and "x: (3,)" in msg and "(4,)" in msg
    assert "layer.weight" not in msg


def test_mismatched_models_error():
    with pytest.raises(ValueError, match=r"2\.weight"):
        task_vector(mlp(h=4), mlp(h=5))
    with pytest.raises(TypeError, match="finetuned"):
        task_vector([1, 2], mlp())
    with pytest.raises(ValueError, match="missing"):
        apply_task_vector(mlp(), {"nope.weight": torch.zeros(1)})


# ----------------------------------------------------------------------------------- U = I reproduces direct
IDENTITY_MAPS = {
    "retraction": lambda d: OrthogonalLinear(d, d, init="identity"),
    "cayley": lambda d: OrthogonalLinear(d, d, method="cayley", init="identity", dtype=torch.float64),
    "stiefel": lambda d: StiefelLinear(d, d, init="identity", dtype=torch.float64),
    "lambda": lambda d: LambdaOrthoLinear(d, d, bias=False, init="identity", dtype=torch.float64),
    "affine": lambda d: AffineMap(d, d, bias=False, init="identity", dtype=torch.float64),
    "soft": lambda d: soft_orthogonal_map(d, dtype=torch.float64),
}


@pytest.mark.parametrize("kind", sorted(IDENTITY_MAPS))
def test_identity_maps_reproduce_direct_application_exactly(kind):
    pre = mlp(seed=0)
    tau = task_vector(perturbed(pre, 1), pre)
    target = mlp(seed=7)
    make = IDENTITY_MAPS[kind]
    u1, u2 = make(4), make(4)
    if kind == "retraction":
        u1, u2 = u1.double(), u2.double()
    wrapped = transfer_task_vector(target, tau, mlp_maps(u1, u2))
    direct = apply_task_vector(target, tau)
    x = torch.randn(11, 5, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(wrapped(x), direct(x))
        assert torch.equal(merge_transferred(wrapped)(x), direct(x))


def test_scale_matches_direct_and_target_is_untouched():
    pre = mlp(seed=0)
    tau = task_vector(perturbed(pre, 1), pre)
    target = mlp(seed=7)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    u = [OrthogonalLinear(4, 4, init="identity", dtype=torch.float64) for _ in range(2)]
    wrapped = transfer_task_vector(target, tau, mlp_maps(*u), scale=0.37)
    x = torch.randn(6, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), apply_task_vector(target, tau, 0.37)(x), rtol=1e-14, atol=1e-14)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())
    assert transfer_maps(wrapped) == u  # shared, not copied, in order


# ------------------------------------------------------------------------------ orthogonal U: norm and rank
@given(out_f=st.integers(1, 7), in_f=st.integers(1, 7), rank=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_orthogonal_maps_preserve_norm_singular_values_and_rank(out_f, in_f, rank, seed):
    g = torch.Generator().manual_seed(seed)
    r = min(rank, out_f, in_f)
    tau = (torch.randn(out_f, r, generator=g, dtype=torch.float64)
           @ torch.randn(r, in_f, generator=g, dtype=torch.float64))
    u_in = OrthogonalLinear.from_matrix(random_orthogonal(in_f, in_f, generator=g, dtype=torch.float64))
    u_out = StiefelLinear.from_matrix(random_orthogonal(out_f, out_f, generator=g, dtype=torch.float64))
    layer = TransferredLinear(nn.Linear(in_f, out_f, dtype=torch.float64), tau, u_in=u_in, u_out=u_out)
    delta = layer.delta_weight().detach()
    ref = u_out.weight.detach().T @ tau @ u_in.weight.detach()  # independent product
    torch.testing.assert_close(delta, ref, rtol=1e-12, atol=1e-12)
    tol = 1e-10 * (1 + float(tau.norm()))
    assert abs(float(delta.norm()) - float(tau.norm())) < tol
    np.testing.assert_allclose(np.linalg.svd(delta.numpy(), compute_uv=False),
                               np.linalg.svd(tau.numpy(), compute_uv=False), atol=tol)
    assert np.linalg.matrix_rank(delta.numpy()) == np.linalg.matrix_rank(tau.numpy()) == r


def test_wider_target_with_orthonormal_rows_keeps_norm_and_rank():
    # source width 3, target width 5: maps 3 x 5 with orthonormal rows
    g = torch.Generator().manual_seed(0)
    tau = torch.randn(3, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 3, generator=g, dtype=torch.float64)
    u = StiefelLinear.from_matrix(random_orthogonal(3, 5, generator=g, dtype=torch.float64))
    layer = TransferredLinear(nn.Linear(5, 5, dtype=torch.float64), tau, u_in=u, u_out=u)
    delta = layer.delta_weight().detach()
    assert delta.shape == (5, 5)
    assert abs(float(delta.norm() - tau.norm())) < 1e-12
    assert np.linalg.matrix_rank(delta.numpy()) == 2


def test_non_orthogonal_map_changes_the_norm():
    tau = torch.eye(3, dtype=torch.float64)
    u = AffineMap.from_matrix(2.0 * torch.eye(3, dtype=torch.float64))
    layer = TransferredLinear(nn.Linear(3, 3, dtype=torch.float64), tau, u_in=u, u_out=u)
    torch.testing.assert_close(layer.delta_weight().detach(), 4.0 * tau)


# ------------------------------------------------------------------------------------------------- merging
@pytest.mark.parametrize("kind", ["retraction", "cayley", "stiefel", "lambda", "soft"])
def test_merge_after_training_gives_identical_outputs_and_plain_model(kind):
    pre = mlp(seed=0)
    tau = task_vector(perturbed(pre, 1), pre)
    target = mlp(seed=7)
    make = IDENTITY_MAPS[kind]
    u1, u2 = make(4).double(), make(4).double()
    model = transfer_task_vector(target, tau, mlp_maps(u1, u2))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(30, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (30,), generator=g)
    hist = train_transfer_maps(model, x, y, steps=15, lr=0.01)
    assert len(hist) == 15 and min(hist) <= hist[0]
    if kind != "soft":  # the unsquared soft penalty has a kink at U = I that random labels barely overcome
        assert hist[-1] < hist[0]
    assert not torch.equal(u1.weight.detach(), torch.eye(4, dtype=torch.float64))  # it moved
    for p in target.parameters():  # the original target's parameters were not trained
        assert p.grad is None
    merged = merge_transferred(model)
    assert not any(isinstance(m, (TransferredLinear, OrthogonalLinear, StiefelLinear, LambdaOrthoLinear))
                   for m in merged.modules())
    assert all(type(m) in (nn.Sequential, nn.Linear, nn.ReLU) for m in merged.modules())
    assert all(p.requires_grad for p in merged.parameters())
    xt = torch.randn(9, 5, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(merged(xt), model(xt))
    if kind in ("retraction", "cayley", "stiefel"):
        tol = 1e-4 if kind == "retraction" else 1e-8  # two Newton–Schulz steps per retraction
        assert u1.orthogonality_error() < tol and u2.orthogonality_error() < tol


def test_merge_a_bare_transferred_layer():
    lin = nn.Linear(3, 2)
    t = TransferredLinear(lin, torch.ones(2, 3), torch.ones(2), scale=2.0)
    m = merge_transferred(t)
    assert type(m) is nn.Linear
    torch.testing.assert_close(m.weight, lin.weight + 2.0)
    torch.testing.assert_close(m.bias, lin.bias + 2.0)


def test_soft_map_regularizer_is_the_unsquared_frobenius_deviation():
    w = torch.randn(5, 5, dtype=torch.float64)
    u = soft_orthogonal_map(5, beta=1.0, init=w)
    ref = np.linalg.norm(w.numpy().T @ w.numpy() - np.eye(5))
    assert abs(float(u.regularizer().detach()) - ref) < 1e-10
    assert abs(float(soft_orthogonal_map(5, beta=0.5, init=w).regularizer().detach()) - 0.5 * ref) < 1e-10


# ------------------------------------------------------------------------------------------------ Procrustes
@given(n=st.integers(1, 12), d_t=st.integers(1, 6), d_s=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_procrustes_weight_matches_scipy(n, d_t, d_s, seed):
    rng = np.random.default_rng(seed)
    xt, xs = rng.standard_normal((n, d_t)), rng.standard_normal((n, d_s))
    w = procrustes_weight(xt, xs).numpy()
    assert w.shape == (d_s, d_t)
    if d_t == d_s:
        r, _ = scipy.linalg.orthogonal_procrustes(xt, xs)  # argmin ||xt R - xs||, R = W^T
        assert np.linalg.norm(xt @ w.T - xs) <= np.linalg.norm(xt @ r - xs) + 1e-9
        if n >= d_t and np.linalg.svd(xt.T @ xs, compute_uv=False).min() > 1e-6:
            np.testing.assert_allclose(w.T, r, atol=1e-8)


def test_procrustes_weight_rejects_unpaired():
    with pytest.raises(ValueError, match="same number of rows"):
        procrustes_weight(torch.zeros(3, 2), torch.zeros(4, 2))


# ------------------------------------------------------------------------------------------ planted relation
def rotated_copy(source, q1, q2, act):
    """The source with hidden space k rotated by q_k: h_t = h_s q_k, so W_t = q_out^T W_s q_in."""
    t = mlp(seed=0, act=act)
    s = dict(source.state_dict())
    with torch.no_grad():
        t[0].weight.copy_(q1.T @ s["0.weight"])
        t[0].bias.copy_(q1.T @ s["0.bias"])
        t[2].weight.copy_(q2.T @ s["2.weight"] @ q1)
        t[2].bias.copy_(q2.T @ s["2.bias"])
        t[4].weight.copy_(s["4.weight"] @ q2)
        t[4].bias.copy_(s["4.bias"])
    return t


@pytest.mark.parametrize("planted", ["rotation", "permutation"])
def test_procrustes_transfer_recovers_a_planted_orthogonal_relation(planted):
    g = torch.Generator().manual_seed(5)
    if planted == "rotation":  # rotations commute with the identity activation only
        act = nn.Identity
        q1, q2 = (random_orthogonal(4, 4, generator=g, dtype=torch.float64) for _ in range(2))
    else:  # permutations commute with ReLU
        act = nn.ReLU
        q1, q2 = (torch.eye(4, dtype=torch.float64)[torch.randperm(4, generator=g)] for _ in range(2))
    source = mlp(seed=0, act=act)
    finetuned = perturbed(source, 1)
    if act is nn.Identity:
        ft = mlp(seed=0, act=act)
        ft.load_state_dict(finetuned.state_dict())
        finetuned = ft
    target = rotated_copy(source, q1, q2, act)
    truth = rotated_copy(finetuned, q1, q2, act)  # the fine-tuned target the relation implies
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))  # same function, rotated hidden bases
    tau = task_vector(finetuned, source)
    ht, hs = layer_inputs(target, x, ["2", "4"]), layer_inputs(source, x, ["2", "4"])
    w1, w2 = procrustes_weight(ht["2"], hs["2"]), procrustes_weight(ht["4"], hs["4"])
    torch.testing.assert_close(w1, q1, atol=1e-10, rtol=0)  # U maps target to source: x_s = x_t U^T = x_t q^T
    torch.testing.assert_close(w2, q2, atol=1e-10, rtol=0)
    u1, u2 = OrthogonalLinear.from_matrix(w1), OrthogonalLinear.from_matrix(w2)
    merged = merge_transferred(transfer_task_vector(target, tau, mlp_maps(u1, u2)))
    for k, v in merged.state_dict().items():
        torch.testing.assert_close(v, truth.state_dict()[k], atol=1e-10, rtol=0)
    # unaligned application is wrong
    direct = apply_task_vector(target, tau)
    assert (direct.state_dict()["2.weight"] - truth.state_dict()["2.weight"]).norm() > 0.1


def test_training_hard_maps_recovers_the_planted_models_predictions():
    # cross-entropy only sees decision boundaries, so it need not bring U closer to Q; it must fit the predictions
    g = torch.Generator().manual_seed(11)
    q1, q2 = (random_orthogonal(4, 4, generator=g, dtype=torch.float64) for _ in range(2))
    source = mlp(seed=0, act=nn.Identity)
    ft = mlp(seed=0, act=nn.Identity)
    ft.load_state_dict(perturbed(source, 1, eps=1.0).state_dict())
    target, truth = rotated_copy(source, q1, q2, nn.Identity), rotated_copy(ft, q1, q2, nn.Identity)
    tau = task_vector(ft, source)
    x = torch.randn(200, 5, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = truth(x).argmax(1)
    def noise(q):  # a hard map started near, not at, the planted rotation
        return OrthogonalLinear.from_matrix(_polar(q + 0.3 * torch.randn(4, 4, generator=g, dtype=torch.float64)))

    u1, u2 = noise(q1), noise(q2)
    model = transfer_task_vector(target, tau, mlp_maps(u1, u2), scale=1.0)

    def agreement():
        with torch.no_grad():
            return float((model(x).argmax(1) == y).double().mean())

    before = agreement()
    dist_before = float((u1.weight.detach() - q1).norm() + (u2.weight.detach() - q2).norm())
    train_transfer_maps(model, x, y, steps=150, lr=0.01)
    after = agreement()
    dist_after = float((u1.weight.detach() - q1).norm() + (u2.weight.detach() - q2).norm())
    assert before < 0.95 and after >= 0.97
    assert dist_after < 2.0 * dist_before  # and stays in the neighbourhood of the planted maps
    assert u1.orthogonality_error() < 1e-8


def _polar(m):
    u, _, vh = torch.linalg.svd(m)
    return u @ vh


# ----------------------------------------------------------------------------------------------- bad input
def test_transfer_bad_input_messages():
    pre = mlp(seed=0)
    tau = task_vector(perturbed(pre, 1), pre)
    target = mlp(seed=7)
    u = OrthogonalLinear(4, 4, init="identity", dtype=torch.float64)
    with pytest.raises(ValueError, match=r"not covered.*'2\.bias', '2\.weight', '4\.bias', '4\.weight'"):
        transfer_task_vector(target, tau, {"0": (None, u)})
    transfer_task_vector(target, tau, {"0": (None, u)}, strict=False)
    with pytest.raises(ValueError, match="no entry for the layers"):
        transfer_task_vector(target, {"0.weight": tau["0.weight"]}, {"0": (None, u), "2": u}, strict=False)
    with pytest.raises(ValueError, match="no submodule"):
        transfer_task_vector(target, {"9.weight": tau["0.weight"]}, {"9": (None, u)})
    with pytest.raises(ValueError, match="must be an nn.Linear"):
        transfer_task_vector(target, {"1.weight": tau["0.weight"]}, {"1": (None, u)})
    with pytest.raises(ValueError, match="u_out must map the target's 4 features"):
        transfer_task_vector(target, tau, mlp_maps(OrthogonalLinear(3, 3), u))
    with pytest.raises(ValueError, match="u_in is None"):
        TransferredLinear(nn.Linear(3, 2), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="bias=False"):
        TransferredLinear(nn.Linear(3, 3), torch.zeros(3, 3), u_in=AffineMap(3, 3))
    with pytest.raises(ValueError, match="scale"):
        TransferredLinear(nn.Linear(3, 3), torch.zeros(3, 3), scale=-1.0)
    with pytest.raises(TypeError, match="tau_weight"):
        TransferredLinear(nn.Linear(3, 3), torch.zeros(3, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="maps"):
        transfer_task_vector(target, tau, {})
    with pytest.raises(ValueError, match="no alignment maps"):
        train_transfer_maps(nn.Linear(2, 2), torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))


# ------------------------------------------------------------------------------------------------- the demo
def test_quick_demo_writes_the_schema(tmp_path, capsys, monkeypatch):
    from relaxedortho.transfer import experiment

    threads, seen, run_once = torch.get_num_threads(), [], experiment._run_once
    monkeypatch.setattr(experiment, "_run_once", lambda *a: seen.append(torch.get_num_threads()) or run_once(*a))
    report = run_transfer_demo(tmp_path, seed=0, quick=True, progress=False)
    assert seen == [1] and torch.get_num_threads() == threads  # one thread while it runs, restored after
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["accuracy"] == report["accuracy"]
    acc = on_disk["accuracy"]
    for key in ("target", "direct", "soft_U", "hard_U", "lambda_U", "procrustes_U", "finetune"):
        assert 0.0 <= acc[key] <= 1.0 and math.isfinite(acc[key])
    printed = capsys.readouterr().out
    assert "procrustes_U" in printed and "finetune" in printed
    # the design makes transfer meaningful: the target alone fails the relabelled task, aligned transfer does not
    assert acc["target"] < 0.2 and acc["direct"] < 0.3
    assert acc["procrustes_U"] > acc["direct"] + 0.4
    assert acc["procrustes_U"] > acc["random_tau_hard_U"] + 0.2  # tau carries the task, not the maps alone
    assert on_disk["orthogonality_error"]["hard_U"] < 1e-4
    assert abs(on_disk["update_norm_ratio"]["hard_U"] - 1.0) < 1e-3
