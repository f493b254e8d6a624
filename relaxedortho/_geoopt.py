"""geoopt, imported at first use and without its import-time DeprecationWarnings.

geoopt 0.5.1 decorates helpers with ``torch.jit.script``, which recent PyTorch deprecates: about 73
warnings at import, which flood pytest and break ``-W error``. They say nothing about the user's code,
so they are silenced for the import alone. geoopt costs about a second to import (it loads
``scipy.optimize``), so ``relaxedortho._geoopt.geoopt`` imports it only when first used: by a
:class:`~relaxedortho.StiefelLinear` or a Riemannian optimizer.
"""
from __future__ import annotations

import sys
import warnings
from typing import Any

__all__ = ["geoopt", "is_manifold_parameter"]


def _import_geoopt() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        import geoopt
    return geoopt


def __getattr__(name: str) -> Any:
    if name == "geoopt":
        module = _import_geoopt()
        globals()["geoopt"] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_manifold_parameter(p: Any) -> bool:
    """Whether ``p`` is a geoopt :class:`~geoopt.ManifoldParameter` on a non-Euclidean manifold.

    Does not import geoopt: when geoopt was never imported, no such parameter can exist.
    """
    geoopt = sys.modules.get("geoopt")
    if geoopt is None:
        return False
    return isinstance(p, geoopt.ManifoldParameter) and not isinstance(p.manifold, geoopt.Euclidean)
