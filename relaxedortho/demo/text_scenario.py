"""The model-upgrade scenario on the shipped sentence-encoder embeddings (:mod:`relaxedortho.datasets`)."""
from __future__ import annotations

from dataclasses import replace

import torch

from .spectrum import _maps_and_report, _Progress

def _run_text(out, cfg, dev, seed, progress, t_start) -> dict:
    """The model-upgrade scenario on the shipped sentence-encoder embeddings (:mod:`relaxedortho.datasets`)."""
    from ..datasets import load_text_embeddings

    prog = _Progress(progress, 4 + len(cfg.lams) + len(cfg.band_eps) + 4)
    torch.manual_seed(seed)
    d = load_text_embeddings()
    ql, gl = d.labels(cfg.relevance)

    def t(x):
        return torch.from_numpy(x).to(dev)

    H_new, H_old, Q_new, Q_old, G_new, G_old = map(t, (d.train_new, d.train_old, d.query_new, d.query_old,
                                                       d.gallery_new, d.gallery_old))
    cfg = replace(cfg, width=H_old.shape[1], new_width=H_new.shape[1])
    relevance = ("a query's relevant document is its own package's" if cfg.relevance == "item"
                 else "relevant documents are those of the query's Debian section")
    about = {"protocol": f"model upgrade: gallery indexed by the old encoder, queries by the new one; cosine "
                         f"retrieval of long descriptions by short descriptions; {relevance}",
             "n_train": int(H_new.shape[0]), "n_query": int(Q_new.shape[0]), "n_gallery": int(G_new.shape[0]),
             "old_model": d.old_model, "new_model": d.new_model, "corpus": d.corpus, "relevance": cfg.relevance}
    prog.step(f"text: {about['n_train']} training pairs, {about['n_query']} queries, {about['n_gallery']} gallery "
              f"documents; old {d.old_model} ({cfg.width}-d), new {d.new_model} ({cfg.new_width}-d)")
    return _maps_and_report(out, cfg, dev, seed, prog, t_start, about, cfg.new_width, ql, gl,
                            H_new, H_old, Q_new, Q_old, G_new, G_old)
