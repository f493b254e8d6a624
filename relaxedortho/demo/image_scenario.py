"""The class-extension scenario on images: split, old and new MLPs, their features (steps 1–2 of the demo)."""
from __future__ import annotations

import numpy as np
import torch

from ..data import class_extension_split, load_digits, load_fashion_mnist
from .image_models import MLP, _train_classifier
from .spectrum import _maps_and_report, _Progress
from .text_scenario import _run_text

def _run(out, cfg, dev, seed, data_dir, progress, t_start) -> dict:
    if cfg.dataset == "text":
        return _run_text(out, cfg, dev, seed, progress, t_start)
    n_maps = 4 + len(cfg.lams) + len(cfg.band_eps)
    prog = _Progress(progress, 4 + n_maps + 2)
    torch.manual_seed(seed)

    # -- data and splits
    if cfg.dataset == "digits":
        X_all, y_all = load_digits()
    else:
        Xtr, ytr = load_fashion_mnist(data_dir, "train")
        Xte, yte = load_fashion_mnist(data_dir, "test")
        X_all, y_all = np.concatenate([Xtr, Xte]), np.concatenate([ytr, yte])
    classes = np.unique(y_all)
    old_classes = tuple(int(c) for c in (cfg.old_classes or classes[: len(classes) // 2]))
    idx_tr, idx_q, idx_g = class_extension_split(y_all, train_fraction=cfg.train_fraction,
                                                 query_fraction=cfg.query_fraction, seed=seed,
                                                 max_train=cfg.max_train, max_eval=cfg.max_eval)
    X = torch.from_numpy(X_all).to(dev)
    y = torch.from_numpy(y_all).to(dev)
    tr = torch.from_numpy(np.sort(idx_tr)).to(dev)
    old_mask = torch.isin(y[tr], torch.tensor(old_classes, device=dev))
    prog.step(f"{cfg.dataset}: {len(idx_tr)} training images, {len(idx_q)} queries, {len(idx_g)} gallery "
              f"images; old classes {list(old_classes)}")

    # -- models
    torch.manual_seed(seed)
    new_w = cfg.new_width or cfg.width
    old = MLP(X.shape[1], cfg.hidden, 1, cfg.width, len(classes)).to(dev)
    _train_classifier(old, X[tr][old_mask], y[tr][old_mask], cfg, seed)
    prog.step(f"old model (1 hidden layer, width {cfg.width}) trained on {int(old_mask.sum())} images of "
              f"{len(old_classes)} classes")
    torch.manual_seed(seed + 1000)
    new = MLP(X.shape[1], cfg.hidden, 2, new_w, len(classes)).to(dev)
    _train_classifier(new, X[tr], y[tr], cfg, seed + 1000)
    prog.step(f"new model (2 hidden layers, width {new_w}) trained on {len(idx_tr)} images of all "
              f"{len(classes)} classes")

    q, g = torch.from_numpy(idx_q).to(dev), torch.from_numpy(idx_g).to(dev)
    ql, gl = y[q].cpu().numpy(), y[g].cpu().numpy()
    H_new, H_old = new.embed(X[tr]), old.embed(X[tr])          # training pairs for the maps
    Q_new, Q_old, G_new, G_old = new.embed(X[q]), old.embed(X[q]), new.embed(X[g]), old.embed(X[g])
    about = {"protocol": "class extension: old model on classes {}, new model on all; cosine retrieval; "
                         "queries from held-out images, gallery from the rest".format(list(old_classes)),
             "n_train": int(len(idx_tr)), "n_query": int(len(idx_q)), "n_gallery": int(len(idx_g))}
    return _maps_and_report(out, cfg, dev, seed, prog, t_start, about, new_w, ql, gl,
                            H_new, H_old, Q_new, Q_old, G_new, G_old)
