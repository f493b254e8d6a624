"""The argument parser of the ``relaxedortho`` command: every subcommand, its options and its manual."""
from __future__ import annotations

import argparse
import math
from typing import Any

from .arguments import (FORMATS_HELP, _Formatter, _add_training_options, _float_list, _int_list, _lam,
                        _nonneg_int, _positive_float, _positive_int)
from .demos import cmd_compat_bench, cmd_demo, cmd_transfer_demo
from .evaluate import cmd_eval
from .fit import cmd_fit
from .map_factory import MAP_KINDS
from .sweep import cmd_sweep



def _command(sub: Any, name: str, func: Any, **parser_options: Any) -> argparse.ArgumentParser:
    """A subcommand parser (the manual-style help formatter) that runs ``func(args)``."""
    p = sub.add_parser(name, formatter_class=_Formatter, **parser_options)
    p.set_defaults(func=func)
    return p


def _add_run_flags(p: argparse.ArgumentParser, quick_help: str | None = None) -> None:
    """``--quiet`` (no progress lines on stderr) and, given its help, ``--quick`` (a smoke-test size)."""
    if quick_help is not None:
        p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")

def _add_pair_files(p: argparse.ArgumentParser, out_help: str) -> None:
    """The two paired feature files and the output of ``fit`` and ``sweep``."""
    p.add_argument("source", help="source feature file (rows = items), e.g. new-model embeddings")
    p.add_argument("target", help="target feature file, same rows as source, e.g. old-model embeddings")
    p.add_argument("--out", required=True, help=out_help)

def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``relaxedortho`` command (all subcommands)."""
    from .. import __version__

    p = argparse.ArgumentParser(
        prog="relaxedortho", formatter_class=_Formatter,
        description="Maps between representation spaces that are exactly, nearly (λ-orthogonal) or not "
                    "orthogonal: a demo of backward-compatible retrieval, and tools to align your own "
                    "embeddings.",
        epilog="examples:\n"
               "  relaxedortho demo --out demo-out\n"
               "  relaxedortho fit new_train.npy old_train.npy --kind lambda --lam 1 --out b.pt\n"
               "  relaxedortho eval b.pt --query new_q.npy --query-labels q.txt \\\n"
               "      --gallery old_g.npy --gallery-labels g.txt --old-query old_q.npy\n"
               "  relaxedortho sweep new_train.npy old_train.npy --lams 0,0.5,1,2,inf --out sweep-out\n\n"
               "Run 'relaxedortho SUBCOMMAND --help' for the manual of each subcommand.")
    p.add_argument("--version", action="version", version=f"relaxedortho {__version__}")
    sub = p.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)

    # demo ---------------------------------------------------------------------------------------------
    d = _command(sub, "demo", cmd_demo, help="backward-compatible retrieval on real data (the main demo)",
        description=(
            "Class-extension scenario of Ricci et al. (NeurIPS 2025, arXiv 2509.16664): an 'old' MLP trained on\n"
            "half of the classes and a 'new' MLP (other seed, one more layer) trained on all classes, both frozen.\n"
            "Backward maps B: new -> old are fitted on paired training features across the spectrum: closed-form\n"
            "orthogonal Procrustes, a trained hard orthogonal map, λ-orthogonal maps for several λ, the affine map\n"
            "(trained and least squares), nested band maps (singular values in [sqrt(1-eps), sqrt(1+eps)]), and a\n"
            "forward map F: old -> new-aligned space. Held-out images are split into queries and gallery; cosine\n"
            "retrieval gives CMC top-1 and mAP for old/old, new/old (unmapped), new/new, B(new)/old and\n"
            "B(new)/B(new). A map is compatible when B(new)/old beats old/old on top-1 and mAP.\n\n"
            "Output: the table on stdout, OUT/report.json (schema: 'baselines' {old_old, new_old, new_new} and\n"
            "'maps' {name: {kind, top1_to_old, top1_self, map_to_old, orthogonality_error, ...}}) and\n"
            "OUT/lambda_tradeoff.png. Deterministic for a given seed on a given machine and device.\n\n"
            "datasets:\n"
            "  digits         scikit-learn's bundled 8x8 handwritten digits (1797 images; no download)\n"
            "  fashion-mnist  Fashion-MNIST from local IDX files (train-images-idx3-ubyte[.gz] etc.), as installed\n"
            "                 by the Debian package dataset-fashion-mnist in /usr/share/datasets/fashion-mnist;\n"
            "                 --data-dir for another folder. Nothing is downloaded.\n"
            "  text           model upgrade on real text: shipped embeddings of two pretrained sentence encoders\n"
            "                 (old all-MiniLM-L6-v2, new multilingual-e5-small) of Debian package descriptions;\n"
            "                 short descriptions query long ones; no model is trained, only the maps."),
        epilog="examples:\n  relaxedortho demo\n  relaxedortho demo --out /tmp/demo --seed 3 --quiet\n"
               "  relaxedortho demo --new-width 48\n"
               "  relaxedortho demo --dataset fashion-mnist --data-dir ~/data/fashion-mnist --device cuda\n"
               "  relaxedortho demo --dataset text --out text-out")
    d.add_argument("--out", default="demo-out", help="output folder for report.json and lambda_tradeoff.png")
    d.add_argument("--dataset", choices=("digits", "fashion-mnist", "text"), default="digits",
                   help="image dataset, or text (sentence-encoder embeddings)")
    d.add_argument("--data-dir", default=None,
                   help="folder with the Fashion-MNIST files (default: /usr/share/datasets/fashion-mnist)")
    d.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    d.add_argument("--seed", type=_nonneg_int, default=0, help="random seed (split, models, maps)")
    d.add_argument("--new-width", type=_positive_int, default=None,
                   help="feature width of the new model (default: same as the old model; when different, "
                        "the unmapped new/old row is not applicable)")
    _add_run_flags(d, "reduced epochs and fewer λ values (a smoke test)")

    # fit ----------------------------------------------------------------------------------------------
    f = _command(sub, "fit", cmd_fit, help="fit a map between two feature files and save it",
        description=(
            "Fit a map B with B(source_i) ≈ target_i (row i of both files describes the same item), minimising\n"
            "the squared error ||B(X) - Y||_F^2 (closed forms; trained maps: its element-wise mean plus the map's\n"
            "regularizer, as relaxedortho.fit_alignment does), and save it with relaxedortho.save (load it back with\n"
            "relaxedortho.load; the loaded map gives identical outputs). Typical use: source = new-model\n"
            "embeddings, target = old-model embeddings, B = backward map.\n\n"
            "kinds and solvers:\n"
            "  orthogonal  closed: Procrustes W = U V^T of X^T Y = U S V^T (Schönemann 1966); with --bias the data\n"
            "              are centred and the target mean added. trained: OrthogonalLinear (Adam; its default method).\n"
            "  lambda      trained only: LambdaOrthoLinear, penalty sigmoid(alpha(||G-I||_F - λ)) ||G-I||_F\n"
            "              (Ricci et al. 2025); --lam sets λ (inf = affine).\n"
            "  affine      closed: least squares on centred data; trained: AffineMap with Adam.\n"
            "  band        closed: least squares with singular values in [sqrt(1-eps), sqrt(1+eps)] (band-constrained\n"
            "              relaxed Procrustes, docs/math.md §5); --eps sets eps.\n\n" + FORMATS_HELP +
            "\nWith --labels (one per pair) the command also reports leave-one-out retrieval of B(source) against\n"
            "target on the training pairs (first 2000 rows)."),
        epilog="examples:\n"
               "  relaxedortho fit new.npy old.npy --out procrustes.pt\n"
               "  relaxedortho fit new.npy old.npy --kind lambda --lam 2 --epochs 200 --out b.pt\n"
               "  relaxedortho fit feats.npz:new feats.npz:old --kind band --eps 0.5 --labels y.txt --out b.pt\n"
               "  relaxedortho fit new.pt old.pt --kind affine --solver trained --device cuda --out b.pt")
    _add_pair_files(f, "file to write the map to (relaxedortho.save format, .pt)")
    f.add_argument("--kind", choices=MAP_KINDS, default="orthogonal", help="map of the spectrum")
    f.add_argument("--solver", choices=("closed", "trained"), default=None,
                   help="closed form or gradient training (default: closed, except trained for lambda)")
    f.add_argument("--lam", type=_lam, default=1.0, help="λ of a lambda map (>= 0, or inf)")
    f.add_argument("--eps", type=_lam, default=0.5, help="band half-width eps of a band map (>= 0)")
    f.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None,
                   help="learn a bias (default: no for orthogonal, yes for the others)")
    f.add_argument("--labels", default=None, help="optional label file (one per pair) for a retrieval report")
    _add_training_options(f, " (trained solver)", epochs_help="training epochs (trained solver)",
                          seed_help="random seed (trained solver)")
    f.add_argument("--json", default=None, help="also write a JSON summary to this file")
    _add_run_flags(f)

    # eval ---------------------------------------------------------------------------------------------
    e = _command(sub, "eval", cmd_eval, help="retrieval and compatibility metrics of a saved map",
        description=(
            "Evaluate a saved map B (new -> old) for compatible retrieval: queries embedded by the new model are\n"
            "mapped by B and searched in a gallery embedded by the old model (cosine similarity). Reports CMC\n"
            "top-k and mAP (docs/math.md §7) for B(new)/old; with --old-query also old/old and the compatibility\n"
            "criterion B(new)/old > old/old (Shen et al. 2020); with --new-gallery also B(new)/B(new) and\n"
            "new/new; new/old unmapped when B is square.\n\n" + FORMATS_HELP),
        epilog="examples:\n"
               "  relaxedortho eval b.pt --query new_q.npy --query-labels q.npy --gallery old_g.npy \\\n"
               "      --gallery-labels g.npy\n"
               "  relaxedortho eval b.pt --query new_q.npy --query-labels q.txt --gallery old_g.npy \\\n"
               "      --gallery-labels g.txt --old-query old_q.npy --new-gallery new_g.npy --json eval.json")
    e.add_argument("map", help="map file written by 'relaxedortho fit' or relaxedortho.save")
    e.add_argument("--query", required=True, help="query features from the new model")
    e.add_argument("--query-labels", required=True, help="one label per query row")
    e.add_argument("--gallery", required=True, help="gallery features from the old model")
    e.add_argument("--gallery-labels", required=True, help="one label per gallery row")
    e.add_argument("--old-query", default=None, help="the same queries embedded by the old model (old/old)")
    e.add_argument("--new-gallery", default=None, help="the same gallery embedded by the new model")
    e.add_argument("--topk", type=_int_list, default=[1, 5], help="comma-separated k of CMC top-k")
    e.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    e.add_argument("--json", default=None, help="also write the metrics as JSON to this file")

    # sweep --------------------------------------------------------------------------------------------
    s = _command(sub, "sweep", cmd_sweep, help="λ sweep of λ-orthogonal maps with a plot",
        description=(
            "Train one LambdaOrthoLinear map source -> target per λ (λ = inf is the free affine map) on a\n"
            "training share of the pairs and measure, on the held-out pairs: the fit (mean squared error per\n"
            "pair), the distance from orthogonality ||A^T A - I||_F, and the distortion of the source geometry\n"
            "||B(X)B(X)^T - XX^T||_F / ||XX^T||_F. With --labels also leave-one-out retrieval B(source)/target\n"
            "and B(source)/B(source). Larger λ: better fit, more distortion (the stability-plasticity\n"
            "trade-off of Ricci et al. 2025). Writes OUT/sweep.json and OUT/sweep.png.\n\n" + FORMATS_HELP),
        epilog="examples:\n"
               "  relaxedortho sweep new.npy old.npy --out sweep-out\n"
               "  relaxedortho sweep new.npy old.npy --lams 0,1,4,16,inf --labels y.npy --epochs 200 --out s")
    _add_pair_files(s, "output folder for sweep.json and sweep.png")
    s.add_argument("--lams", type=_float_list, default=[0.0, 0.5, 1.0, 2.0, 4.0, math.inf],
                   help="comma-separated λ values (inf allowed)")
    s.add_argument("--labels", default=None, help="optional label file (one per pair)")
    s.add_argument("--val-fraction", type=_positive_float, default=0.2, help="share of pairs held out")
    _add_training_options(s, "", epochs_help="training epochs per λ", seed_help="random seed (split and training)")
    s.add_argument("--save-maps", action="store_true", help="also save each map as OUT/map_lam=λ.pt")
    _add_run_flags(s)

    # transfer-demo ------------------------------------------------------------------------------------
    t = _command(sub, "transfer-demo", cmd_transfer_demo, help="cross-model task-vector transfer demo",
        description=(
            "Transfer a task vector tau = W_finetuned - W_pretrained from a source model to an independently\n"
            "trained target model through orthogonal / λ-orthogonal maps U (W_target + U^T tau U; Endo, Kera,\n"
            "Kawamoto, arXiv 2505.12021). Provided by relaxedortho.transfer.run_transfer_demo; reports go to OUT."),
        epilog="examples:\n  relaxedortho transfer-demo --out transfer-out\n"
               "  relaxedortho transfer-demo --quick --seed 1 --out /tmp/t")
    t.add_argument("--out", default="transfer-out", help="output folder")
    t.add_argument("--seed", type=_nonneg_int, default=0, help="random seed")
    _add_run_flags(t, "reduced size (a smoke test)")

    # compat-bench -------------------------------------------------------------------------------------
    c = _command(sub, "compat-bench", cmd_compat_bench, help="compatible-learning methods side by side",
        description=(
            "Class-extension protocol (BCT/FCT/BT2/OCA): an old CNN trained on half of the classes, a larger new CNN\n"
            "(other seed) on all classes, both frozen. Runs, on the same split: Procrustes and the λ-orthogonal B/F\n"
            "pair (maps new -> old), FCT and FastFill (old gallery transformed into the new space, FastFill's\n"
            "uncertainty-ordered partial backfilling), SLERP (training-free query interpolation), and three new\n"
            "models trained to be compatible: BCT, OCA and BT2. Reports CMC top-1/top-5 and mAP for old/old,\n"
            "new/new and, per method, new->old (against the gallery embedded by the old model) and the method's\n"
            "own new/new; compatible = new->old beats old/old on top-1 and mAP.\n\n"
            "Output: the table on stdout, OUT/report.json ('baselines' {old_old, new_new}, 'methods' {name:\n"
            "{top1_new_old, map_new_old, top1_new_new, compatible, ...}}, 'backfilling', 'ranking') and\n"
            "OUT/compat_tradeoff.png. The seed fixes the split, the initialisations and the batch order (digits runs\n"
            "reproduce to the last digit on one machine).\n\n"
            "datasets:\n"
            "  auto           Fashion-MNIST when its files are found, else the bundled digits (digits with --quick)\n"
            "  digits         scikit-learn's bundled 8x8 digits (1797 images; no download)\n"
            "  fashion-mnist  Fashion-MNIST IDX files as installed by the Debian package dataset-fashion-mnist\n"
            "                 (/usr/share/datasets/fashion-mnist) or in --data-dir. Nothing is downloaded."),
        epilog="examples:\n  relaxedortho compat-bench --out compat-out --quick\n"
               "  relaxedortho compat-bench --out compat-out --dataset fashion-mnist --data-dir ~/data/fmnist")
    c.add_argument("--out", default="compat-out", help="output folder for report.json and compat_tradeoff.png")
    c.add_argument("--dataset", choices=("auto", "digits", "fashion-mnist"), default="auto", help="image dataset")
    c.add_argument("--data-dir", default=None,
                   help="folder with the Fashion-MNIST files (default: /usr/share/datasets/fashion-mnist)")
    _add_run_flags(c, "short schedules (about half a minute on digits)")
    c.add_argument("--seed", type=_nonneg_int, default=0, help="random seed (split, models, maps)")
    c.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    return p
