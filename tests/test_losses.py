"""Losses of backward-compatible alignment against hand computations and independent implementations."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from relaxedortho import losses as L


def test_squared_losses_by_hand():
    p = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    total = 1 + 4 + 1 + 4
    assert L.backward_loss(p, t).item() == pytest.approx(total / 4)
    assert L.backward_loss(p, t, reduction="sample_mean").item() == pytest.approx(total / 2)
    assert L.backward_loss(p, t, reduction="sum").item() == pytest.approx(total)
    assert L.forward_loss(p, t).item() == pytest.approx(total / 4)
    with pytest.raises(ValueError, match="same shape"):
        L.backward_loss(p, t[:1])
    with pytest.raises(ValueError, match="reduction"):
        L.forward_loss(p, t, reduction="avg")


def test_forward_loss_gradient_reaches_both_maps_unless_detached():
    a = torch.randn(4, 3, requires_grad=True)
    b = torch.randn(4, 3, requires_grad=True)
    L.forward_loss(a, b).backward()
    assert b.grad is not None and torch.allclose(b.grad, -a.grad)
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    L.forward_loss(a2, b2, detach_target=True).backward()
    assert b2.grad is None and torch.allclose(a2.grad, a.grad)


def _supcon_numpy(a, b, ya, yb, tau):
    """float64 literal formula: mean over rows with positives of -mean_{j in P(i)} log softmax."""
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)

    def one(x, y, yx, yy):
        z = x @ y.T / tau
        logp = z - z.max(1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
        vals = []
        for i in range(len(x)):
            pos = yy == yx[i]
            if pos.any():
                vals.append(-logp[i, pos].mean())
        return float(np.mean(vals)) if vals else 0.0

    return 0.5 * (one(an, bn, ya, yb) + one(bn, an, yb, ya))


@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 4), st.integers(0, 10_000),
       st.sampled_from([0.07, 0.5, 2.0]))
def test_supervised_contrastive_matches_numpy(n, m, n_labels, seed, tau):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((n, 5)), rng.standard_normal((m, 5))
    ya, yb = rng.integers(0, n_labels, n), rng.integers(0, n_labels, m)
    ta = torch.from_numpy(a).requires_grad_()
    tb = torch.from_numpy(b).requires_grad_()
    loss = L.supervised_contrastive(ta, tb, torch.from_numpy(ya), torch.from_numpy(yb), temperature=tau)
    assert loss.item() == pytest.approx(_supcon_numpy(a, b, ya, yb, tau), rel=1e-10, abs=1e-12)
    loss.backward()
    assert torch.isfinite(ta.grad).all() and torch.isfinite(tb.grad).all()


def test_clip_form_and_its_equality_with_one_item_per_class():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / 0.1
    target = torch.arange(6)
    clip = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    assert L.supervised_contrastive(a, b, temperature=0.1).item() == pytest.approx(clip.item(), rel=1e-12)
    # one item per class on each side, in different orders: the same as CLIP on matched rows
    ya = torch.tensor([3, 0, 5, 1, 4, 2])
    perm = torch.tensor([2, 4, 0, 5, 1, 3])
    sup = L.supervised_contrastive(a, b[perm], ya, ya[perm], temperature=0.1)
    assert sup.item() == pytest.approx(clip.item(), rel=1e-12)
    # labels_b=None: b paired with a and shares its labels
    assert L.supervised_contrastive(a, b, ya, temperature=0.1).item() == pytest.approx(clip.item(), rel=1e-12)
    one_way = L.supervised_contrastive(a, b, temperature=0.1, symmetric=False)
    assert one_way.item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-12)


def test_contrastive_edge_cases():
    x = torch.zeros(3, 4, requires_grad=True)                 # zero features: finite loss and gradient
    loss = L.supervised_contrastive(x, torch.randn(3, 4), [0, 1, 1])
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    # no shared label at all: 0 (rows without positives are left out)
    assert L.supervised_contrastive(torch.randn(2, 3), torch.randn(2, 3), [0, 1], [2, 3]).item() == 0.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lb = L.supervised_contrastive(torch.randn(8, 4).bfloat16(), torch.randn(8, 4).bfloat16(), torch.arange(8) % 3)
    assert lb.dtype == torch.float32 and torch.isfinite(lb)
    for kwargs, match in [(dict(temperature=0.0), "temperature"), (dict(labels_a=[0.5, 1.0]), "labels_a"),
                          (dict(labels_b=[0, 1]), "labels_b given")]:
        with pytest.raises(ValueError, match=match):
            L.supervised_contrastive(torch.randn(2, 3), torch.randn(2, 3), **kwargs)
    with pytest.raises(ValueError, match="paired"):
        L.supervised_contrastive(torch.randn(2, 3), torch.randn(3, 3))
    with pytest.raises(ValueError, match="feature dimension"):
        L.supervised_contrastive(torch.randn(2, 3), torch.randn(2, 4), [0, 1])


def test_gather_hook_is_applied_and_noop_without_distributed():
    a, b, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    assert L.gather_with_grad(a) is a
    ref = L.supervised_contrastive(a, b, y, gather=L.gather_with_grad)
    assert ref.item() == pytest.approx(L.supervised_contrastive(a, b, y).item())
    calls = []

    def doubling(t):
        calls.append(t.shape)
        return torch.cat([t, t])

    doubled = L.supervised_contrastive(a, b, y, gather=doubling)
    assert len(calls) == 4   # a, b and both label tensors
    assert doubled.item() == pytest.approx(
        L.supervised_contrastive(torch.cat([a, a]), torch.cat([b, b]), torch.cat([y, y])).item())


def _ddp_worker(rank, world, init_file, a, b, y, out_dir):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        n = a.shape[0] // world
        sl = slice(rank * n, (rank + 1) * n)
        la, lb = a[sl].clone().requires_grad_(), b[sl].clone().requires_grad_()
        for labels in (y[sl], None):
            for t in (la, lb):
                t.grad = None
            loss = L.supervised_contrastive(la, lb, labels, temperature=0.2, gather=L.gather_with_grad)
            loss.backward()
            tag = "sup" if labels is not None else "clip"
            torch.save({"loss": loss.detach(), "ga": la.grad, "gb": lb.grad}, f"{out_dir}/{tag}{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gather_with_grad_two_processes_gloo(tmp_path):
    """Each process's gradient (summed over processes by the gather backward) = world x global gradient,
    so DDP's averaging over processes yields the single-process gradient of the global-batch loss."""
    import torch.multiprocessing as mp
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3])
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), a, b, y, str(tmp_path)), nprocs=2, join=True)
    for tag, labels in (("sup", y), ("clip", None)):
        ga, gb = a.clone().requires_grad_(), b.clone().requires_grad_()
        loss = L.supervised_contrastive(ga, gb, labels, temperature=0.2)
        loss.backward()
        for rank in range(2):
            out = torch.load(tmp_path / f"{tag}{rank}.pt")
            sl = slice(rank * 4, (rank + 1) * 4)
            torch.testing.assert_close(out["loss"], loss.detach())
            torch.testing.assert_close(out["ga"], 2 * ga.grad[sl])
            torch.testing.assert_close(out["gb"], 2 * gb.grad[sl])


def test_influence_loss_through_frozen_classifier():
    g = torch.Generator().manual_seed(2)
    clf = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4, generator=g, requires_grad=True)
    y = torch.tensor([0, 2, 1, 1, 0])
    loss = L.influence_loss(x, y, clf)
    ref = F.cross_entropy(x @ clf.weight.T + clf.bias, y)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    loss.backward()
    assert clf.weight.grad is None and clf.bias.grad is None     # frozen
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert L.influence_loss(x, y, (clf.weight, clf.bias)).item() == pytest.approx(loss.item(), rel=1e-6)
    assert L.influence_loss(x, y, clf.weight, reduction="sum").item() == pytest.approx(
        F.cross_entropy(x @ clf.weight.T, y, reduction="sum").item(), rel=1e-6)
    with pytest.raises(ValueError, match="expects 4 features"):
        L.influence_loss(torch.randn(5, 3), y, clf.weight)
    with pytest.raises(ValueError, match="labels"):
        L.influence_loss(x, y[:3], clf)
    with pytest.raises(TypeError, match="old_classifier"):
        L.influence_loss(x, y, "linear")
