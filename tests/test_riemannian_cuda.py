"""The Riemannian tools on a CUDA device give the CPU's answers (skipped without a GPU)."""
import math

import pytest
import torch
from torch import nn

from relaxedortho.closed_form import fit_closed_form
from relaxedortho.linalg import random_orthogonal
from relaxedortho.riemannian import (cayley, cayley_inverse, chordal_mean, geodesic, karcher_mean, merge_models,
                                     orthogonal_adapter_bases, permute_hidden_units, skew_log, stiefel_exp,
                                     stiefel_log, weight_matching)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_group_functions_on_cuda_match_cpu(dtype):
    g = torch.Generator().manual_seed(0)
    R = torch.stack([random_orthogonal(6, 6, generator=g, dtype=torch.float64, special=True) for _ in range(3)])
    angles = torch.angle(torch.linalg.eigvals(R)).abs()
    assert float(angles.max()) < math.pi - 1e-3
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    Rc, Rd = R.to(dtype), R.to(dtype).cuda()
    for f in (skew_log, lambda r: geodesic(r[0], r[1], torch.tensor([0.2, 0.7])), lambda r: cayley_inverse(r),
              lambda r: cayley(skew_log(r)), lambda r: chordal_mean(r), lambda r: karcher_mean(r).mean):
        out = f(Rd)
        assert out.is_cuda and out.dtype == dtype
        torch.testing.assert_close(out.cpu(), f(Rc), atol=tol, rtol=0)
    U = random_orthogonal(7, 3, generator=g, dtype=torch.float64)
    D = 0.3 * (torch.eye(7, dtype=torch.float64) - U @ U.T) @ torch.randn(7, 3, generator=g, dtype=torch.float64)
    U1 = stiefel_exp(U.cuda(), D.cuda())
    torch.testing.assert_close(stiefel_log(U.cuda(), U1).cpu(), D, atol=1e-11, rtol=0)
    B = orthogonal_adapter_bases(8, 2, num_adapters=3, dtype=dtype, device="cuda")
    assert all(b.is_cuda for b in B)


def test_merging_permutations_and_rebasin_on_cuda():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).double()
    experts = []
    for s in (1, 2):
        e = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).double()
        e.load_state_dict(base.state_dict())
        with torch.no_grad():
            for p in e.parameters():
                p.add_(0.05 * torch.randn_like(p))
        experts.append(e)
    cpu = merge_models(base, experts)
    gpu = merge_models(base.cuda(), [e.cuda() for e in experts])
    for a, b in zip(cpu.state_dict().values(), gpu.state_dict().values()):
        torch.testing.assert_close(b.cpu(), a, atol=1e-12, rtol=0)
    shuffled = permute_hidden_units(base, [torch.randperm(16)])
    res = weight_matching(base, shuffled)
    assert all(torch.equal(a, b) for a, b in zip(res.model.state_dict().values(), base.state_dict().values()))
    X = torch.randn(200, 6, dtype=torch.float64, device="cuda")
    P = torch.eye(6, dtype=torch.float64, device="cuda")[torch.randperm(6, device="cuda")]
    m = fit_closed_form(X, X @ P, kind="permutation")
    assert m.weight.is_cuda and torch.equal(m.weight.T, P)
