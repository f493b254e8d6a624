"""relaxedortho.files: every file is written atomically, failures name the file, reports are JSON-safe."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from relaxedortho import files


def _leftovers(folder):
    return [p for p in os.listdir(folder) if ".tmp-" in p]


def test_write_text_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.txt"
    files.write_text(path, "one")
    files.write_text(path, "twö")
    assert path.read_text(encoding="utf-8") == "twö"
    assert not _leftovers(tmp_path)


def test_an_interrupted_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.bin"
    files.write_text(path, "old")

    def broken(fh):
        fh.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(path, broken)
    assert path.read_text() == "old"
    assert not _leftovers(tmp_path)


def test_failures_name_the_file_and_what_it_holds(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cannot write the report to .*nowhere.*does not exist"):
        files.write_json(tmp_path / "nowhere" / "r.json", {}, "report")
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        files.write_text(tmp_path, "x", "note")
    with pytest.raises(TypeError, match="path of the map must be a str"):
        files.write_torch(3, {}, "map")
    files.write_json(tmp_path / "deep" / "er" / "r.json", {"a": 1}, make_dirs=True)
    assert json.loads((tmp_path / "deep" / "er" / "r.json").read_text()) == {"a": 1}


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="cannot write the plot"):
            files.write_text(ro / "p.png", "x", "plot")
        with pytest.raises(OSError, match="cannot write to output folder"):
            files.writable_dir(ro)
    finally:
        ro.chmod(0o700)


def test_writable_dir_refuses_a_path_below_a_file(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OSError, match="cannot write to output folder .*a_file/sub"):
        files.writable_dir(tmp_path / "a_file" / "sub")
    assert files.writable_dir(tmp_path / "new") == str(tmp_path / "new")
    assert (tmp_path / "new").is_dir() and not _leftovers(tmp_path / "new")


def test_torch_payload_round_trip(tmp_path):
    payload = {"w": torch.randn(3, 2, dtype=torch.float64), "n": 4}
    files.write_torch(tmp_path / "p.pt", payload)
    back = torch.load(tmp_path / "p.pt", weights_only=True)
    assert torch.equal(back["w"], payload["w"]) and back["n"] == 4


def test_jsonable():
    obj = {"a": (1, np.float32(0.5)), "b": math.inf, "c": -math.inf, "d": np.int64(3), "e": [np.bool_(True)],
           "f": torch.tensor(2.5)}
    out = files.jsonable(obj)
    assert out == {"a": [1, 0.5], "b": "inf", "c": "-inf", "d": 3, "e": [True], "f": 2.5}
    json.dumps(out, allow_nan=False)
    assert isinstance(out["d"], int) and isinstance(out["e"][0], bool)


def test_save_figure(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    try:
        files.save_figure(fig, tmp_path / "f.png")
    finally:
        plt.close(fig)
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert not _leftovers(tmp_path)


def test_written_files_get_the_permissions_of_a_plain_open(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    files.write_text(tmp_path / "atomic.txt", "x")
    assert (tmp_path / "atomic.txt").stat().st_mode == plain.stat().st_mode
