"""``relaxedortho eval``: retrieval and compatibility metrics of a saved map."""
from __future__ import annotations

from ..files import write_json
from .errors import CLIError
from .inputs import _backends, _check_output_file, _device, _tensor

def _cell(value: float | None, width: int = 8) -> str:
    """One right-aligned table cell: three decimals, or ``n/a``."""
    return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.3f}"


def _orthogonality_error(module) -> float:
    """The map's ``orthogonality_error()``; for a plain ``nn.Linear`` (which relaxedortho.save also writes)
    :func:`relaxedortho.linalg.orthogonality_error` of its weight."""
    fn = getattr(module, "orthogonality_error", None)
    if callable(fn):
        return float(fn())
    from ..linalg import orthogonality_error

    return float(orthogonality_error(module.weight.detach()))


def cmd_eval(args) -> int:
    """``relaxedortho eval``: retrieval and compatibility metrics of a saved map; returns the exit status."""
    import torch

    from ..data import load_features, load_labels
    from ..serialization import load

    if args.json:
        _check_output_file(args.json)
    device = _device(args.device)
    module = load(args.map, map_location="cpu")  # OSError / ValueError naming the file: one line in main()
    module = module.to(device).eval()
    q_new = load_features(args.query, "query features")
    g_old = load_features(args.gallery, "gallery features")
    ql = load_labels(args.query_labels, q_new.shape[0], "query labels")
    gl = load_labels(args.gallery_labels, g_old.shape[0], "gallery labels")
    if q_new.shape[1] != module.in_features:
        raise CLIError(f"query features have {q_new.shape[1]} columns but the map takes {module.in_features}")
    if g_old.shape[1] != module.out_features:
        raise CLIError(f"gallery features have {g_old.shape[1]} columns but the map outputs "
                       f"{module.out_features}")
    q_old = g_new = None
    if args.old_query:
        q_old = load_features(args.old_query, "old-model query features")
        if q_old.shape != (q_new.shape[0], g_old.shape[1]):
            raise CLIError(f"old-model query features must have shape ({q_new.shape[0]}, {g_old.shape[1]}), "
                           f"got {q_old.shape}")
    if args.new_gallery:
        g_new = load_features(args.new_gallery, "new-model gallery features")
        if g_new.shape != (g_old.shape[0], q_new.shape[1]):
            raise CLIError(f"new-model gallery features must have shape ({g_old.shape[0]}, {q_new.shape[1]}), "
                           f"got {g_new.shape}")
    _, _, cmc, mean_average_precision = _backends()
    dtype = next(module.parameters()).dtype
    T = lambda a: _tensor(a, device, dtype)  # noqa: E731
    topk = tuple(sorted(set(args.topk)))

    def metrics(Qf, Gf):
        acc = cmc(Qf, Gf, ql, gl, topk=topk)
        out = {f"top{k}": float(acc[k]) for k in topk}
        out["map"] = float(mean_average_precision(Qf, Gf, ql, gl))
        return out

    with torch.no_grad():
        BQ = module(T(q_new))
        rows = {"B(new)/old": metrics(BQ, T(g_old))}
        if q_old is not None:
            rows["old/old"] = metrics(T(q_old), T(g_old))
        if module.in_features == module.out_features:
            rows["new/old (unmapped)"] = metrics(T(q_new), T(g_old))
        if g_new is not None:
            rows["B(new)/B(new)"] = metrics(BQ, module(T(g_new)))
            rows["new/new"] = metrics(T(q_new), T(g_new))
    result = {"map_file": args.map, "map_class": type(module).__name__,
              "orthogonality_error": _orthogonality_error(module), "n_query": int(q_new.shape[0]),
              "n_gallery": int(g_old.shape[0]), "metrics": rows}
    if q_old is not None:
        ref, new = rows["old/old"], rows["B(new)/old"]
        result["compatible"] = {"top1": new.get("top1", 0) > ref.get("top1", 0) if 1 in topk else None,
                                "map": new["map"] > ref["map"]}
    keys = [f"top{k}" for k in topk] + ["map"]
    print(f"{'query/gallery':<22}" + "".join(f"{k:>8}" for k in keys))
    for name, r in rows.items():
        print(f"{name:<22}" + "".join(_cell(r[k]) for k in keys))
    print(f"||G - I||_F of the map: {result['orthogonality_error']:.4g}")
    if "compatible" in result:
        c = result["compatible"]
        print("compatibility (B(new)/old > old/old): " + ", ".join(
            f"{k} {'passed' if v else 'failed'}" for k, v in c.items() if v is not None))
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0
