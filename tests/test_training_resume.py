"""Exact resume: an interrupted run continued from its checkpoint ends with bitwise the same weights."""
from __future__ import annotations

import math

import pytest
import torch

import relaxedortho as ro
from relaxedortho.training import Trainer, fit_alignment, load_checkpoint

FAST = dict(progress=False, device="cpu", tol=None)  # fixed epoch counts; the stopping rule is tested below


class Interrupt(Exception):
    pass


class StopAt:
    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, step, loss):
        if step == self.step:
            raise Interrupt


def data(n=100, p=6, q=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, p, generator=g)
    Y = 1.7 * X @ torch.randn(q, p, generator=g).T / p ** 0.5 + 0.3
    return X, Y


MAPS = {
    "lambda-randomized": lambda: ro.LambdaOrthoLinear(6, 5, lam=0.4, estimator="randomized", num_probes=4),
    "lambda-exact": lambda: ro.LambdaOrthoLinear(6, 5, lam=0.4),
    "orthogonal-retraction": lambda: ro.OrthogonalLinear(6, 5, bias=True),
    # square (5 -> 5); polishing every 3 folds puts polishes before and after the checkpoint
    "orthogonal-trivialization": lambda: ro.OrthogonalLinear(5, 5, bias=True, polish_every=3),
    "stiefel": lambda: ro.StiefelLinear(6, 5, bias=True),
}


@pytest.mark.parametrize("name", list(MAPS))
def test_resume_is_bitwise_exact(tmp_path, name):
    X, Y = data(p=5) if name == "orthogonal-trivialization" else data()
    opts = dict(epochs=3, batch_size=16, lr=0.02, seed=11, weight_decay=1e-3, clip_grad_norm=5.0,
                val=(X[:20], Y[:20]), metric=lambda a, b, lab: -float((a - b).pow(2).mean()), **FAST)
    torch.manual_seed(0)
    ref = MAPS[name]()
    h_ref = fit_alignment(ref, X, Y, **opts)

    ck = tmp_path / "ck.pt"
    torch.manual_seed(0)
    first = MAPS[name]()
    with pytest.raises(Interrupt):  # 7 steps per epoch: checkpoint at step 8 (epoch 2, batch 1), stop at 10
        fit_alignment(first, X, Y, checkpoint=ck, checkpoint_every=4, callbacks=[StopAt(10)], **opts)
    assert load_checkpoint(ck)["step"] == 8

    torch.manual_seed(123)  # another initialisation and global RNG state: all must come from the checkpoint
    resumed = MAPS[name]()
    torch.randn(17)
    h = fit_alignment(resumed, X, Y, checkpoint=ck, checkpoint_every=4, resume=True, **opts)
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert h.steps == h_ref.steps == 21
    assert h.loss == h_ref.loss and h.val_metric == h_ref.val_metric
    assert h.orthogonality_error == h_ref.orthogonality_error


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    X, Y = data()
    ck = tmp_path / "ck.pt"
    fit_alignment(ro.AffineMap(6, 5), X, Y, epochs=1, batch_size=16, checkpoint=ck, **FAST)
    with pytest.raises(ValueError, match="other settings"):
        fit_alignment(ro.AffineMap(6, 5), X, Y, epochs=2, batch_size=32, checkpoint=ck, resume=True, **FAST)


def test_resume_of_a_finished_run_does_nothing_and_extending_epochs_continues(tmp_path):
    X, Y = data()
    ck = tmp_path / "ck.pt"
    torch.manual_seed(0)
    ref = ro.AffineMap(6, 5)
    const = dict(lr_schedule="constant")  # extended exactly: a schedule planned for 2 epochs already decayed
    fit_alignment(ref, X, Y, epochs=4, batch_size=16, lr=0.01, **const, **FAST)
    torch.manual_seed(0)
    m = ro.AffineMap(6, 5)
    fit_alignment(m, X, Y, epochs=2, batch_size=16, lr=0.01, checkpoint=ck, **const, **FAST)
    w2 = m.weight.detach().clone()
    again = Trainer(m, epochs=2, batch_size=16, lr=0.01, checkpoint=ck, resume=True, **const, **FAST)
    assert again.fit(X, Y).epochs == 2 and torch.equal(m.weight.detach(), w2)
    fit_alignment(m, X, Y, epochs=4, batch_size=16, lr=0.01, checkpoint=ck, resume=True, **const, **FAST)
    assert torch.equal(m.weight.detach(), ref.weight.detach())


def test_a_finished_wsd_run_extended_for_more_epochs_follows_the_new_plan(tmp_path):
    """Under "wsd" the decay is planned over the last epochs of the run: extending a finished run re-plans it (the
    lr restarts from the decayed value's schedule position of the new plan), never divides by a zero factor."""
    X, Y = data()
    ck = tmp_path / "ck.pt"
    torch.manual_seed(0)
    m = ro.AffineMap(6, 5)
    h = fit_alignment(m, X, Y, epochs=2, batch_size=16, lr=0.01, checkpoint=ck, **FAST)
    assert h.decay_epoch == 2
    seen = []
    spy = type("S", (), {"on_step_end": lambda s, t, k, loss: seen.append(t.optimizer.param_groups[0]["lr"])})()
    h = fit_alignment(m, X, Y, epochs=10, batch_size=16, lr=0.01, checkpoint=ck, resume=True,
                      callbacks=[spy], **FAST)
    assert h.epochs == 10 and h.decay_epoch == 9 and all(math.isfinite(v) for v in h.loss)
    assert all(0 < v <= 0.01 for v in seen) and seen[-1] < 1e-3
