"""DDP with 2 CPU processes (gloo): the same weights as one process on the same global batches."""
from __future__ import annotations

import math
import os

import pytest
import torch

import relaxedortho as ro
from relaxedortho.training import fit_alignment, fit_pair, gather_with_grad, launch

N, P, Q, BATCH = 69, 6, 5, 16  # 69 = 4·16 + 5: the last global batch splits 3 / 2 (unequal shards)
OPTS = dict(epochs=2, batch_size=BATCH, lr=0.02, seed=3, progress=False, device="cpu")


def _data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N, P, generator=g)
    Y = 2.0 * X @ torch.randn(Q, P, generator=g).T / P ** 0.5 + 0.1
    labels = torch.arange(N) % 4
    return X, Y, labels


def _clip_contrastive(a, b, labels_a, labels_b=None, temperature=0.07):
    """A supervised contrastive loss of the SupCon/CLIP kind (rows of a vs all of b), for this test only."""
    a = torch.nn.functional.normalize(a, dim=1)
    b = torch.nn.functional.normalize(b, dim=1)
    logp = torch.log_softmax(a @ b.T / temperature, dim=1)
    pos = (labels_a[:, None] == labels_b[None, :]).float()
    return -((pos * logp).sum(1) / pos.sum(1)).mean()


LOSSES = {"backward_loss": lambda b, old: (b - old).pow(2).sum(1).mean(),
          "forward_loss": lambda f, b: (f - b).pow(2).sum(1).mean(),
          "supervised_contrastive": _clip_contrastive}


def _runs():
    """The trainings compared: name -> (state_dict of the result)."""
    X, Y, labels = _data()
    out = {}
    torch.manual_seed(0)
    m = ro.LambdaOrthoLinear(P, Q, lam=0.3)
    fit_alignment(m, X, Y, **OPTS)
    out["lambda"] = m.state_dict()
    torch.manual_seed(0)
    s = ro.StiefelLinear(P, Q, bias=True)
    fit_alignment(s, X, Y, **OPTS)
    out["stiefel"] = s.state_dict()
    torch.manual_seed(0)
    o = ro.OrthogonalLinear(P, P, bias=True)  # square: the trivialization (generator gradients all-reduced)
    fit_alignment(o, X, X.flip(1) + 0.1, **OPTS)
    out["trivialization"] = o.state_dict()
    torch.manual_seed(0)
    b, f = ro.LambdaOrthoLinear(Q, P, lam=0.5), ro.AffineMap(P, P)
    fit_pair(b, f, Y, X, labels, weights=(1.0, 1.0, 0.5), temperature=0.5, losses=LOSSES, **OPTS)
    out["pair"] = {**{"B." + k: v for k, v in b.state_dict().items()}, **{"F." + k: v for k, v in f.state_dict().items()}}
    return {k: {kk: vv.detach().as_subclass(torch.Tensor).clone() for kk, vv in v.items()} for k, v in out.items()}


def _gather_check(rank, world):
    """Rank r holds rows r*2 .. (2 or 3 rows); a loss on the whole gathered batch; returns the local grad."""
    full = torch.arange(15.0).reshape(5, 3) / 7
    lo, hi = (0, 2) if rank == 0 else (2, 5)
    x = full[lo:hi].clone().requires_grad_(True)
    g = gather_with_grad(x)
    assert torch.equal(g.detach(), full)
    loss = (g @ g.T).sin().sum() + g.pow(3).sum()
    loss.backward()
    return x.grad


def _worker(rank, world, path):
    torch.set_num_threads(1)
    result = _runs()
    result["gather_grad"] = {"g": _gather_check(rank, world)}
    torch.save(result, os.path.join(path, f"rank{rank}.pt"))


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    launch(_worker, 2, str(tmp_path), backend="gloo")
    single = _runs()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, ref in single.items():
        for key, value in ref.items():
            for r in ranks:
                torch.testing.assert_close(r[name][key], value, rtol=1e-5, atol=1e-5, msg=f"{name}.{key}")
            assert torch.equal(ranks[0][name][key], ranks[1][name][key])  # replicas stay identical
    # gather_with_grad: the loss is computed on the whole batch on both ranks, so each rank receives
    # world · ∂L/∂x_local (DDP's average then gives exactly ∂L/∂θ)
    full = (torch.arange(15.0).reshape(5, 3) / 7).requires_grad_(True)
    ((full @ full.T).sin().sum() + full.pow(3).sum()).backward()
    torch.testing.assert_close(ranks[0]["gather_grad"]["g"], 2 * full.grad[:2])
    torch.testing.assert_close(ranks[1]["gather_grad"]["g"], 2 * full.grad[2:])
    assert math.isfinite(float(single["lambda"]["weight"].sum()))


def test_gather_with_grad_is_identity_without_process_group():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x
