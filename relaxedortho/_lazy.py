"""Lazy exports of a package (PEP 562): a public name is imported from its submodule at its first access.

``import relaxedortho`` then costs almost nothing beyond the interpreter: geoopt, SciPy's optimizers,
scikit-learn, matplotlib and ``torch._dynamo`` load only with the code that needs them. Every exported name
stays importable (``from relaxedortho import X``, ``relaxedortho.X``) and listed by ``dir()`` (which Sphinx's
autodoc reads), and a resolved name is stored in the package, so later accesses are plain attribute look-ups.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Iterable


def lazy_exports(package: str, exports: dict[str, str],
                 submodules: Iterable[str] = ()) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of ``package``.

    Args:
        package: the package's ``__name__``.
        exports: public name → the module that defines it, relative to ``package`` (``".maps"``) or absolute.
        submodules: names of submodules that ``package.<name>`` imports on access.

    Example (in a package's ``__init__.py``)::

        __getattr__, __dir__ = lazy_exports(__name__, {"AffineMap": ".affine"}, ["affine"])
    """
    exports = dict(exports)
    submodules = frozenset(submodules)

    def __getattr__(name: str) -> Any:
        if name in submodules:
            return importlib.import_module(f"{package}.{name}")  # the import binds it in the package
        source = exports.get(name)
        if source is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source, package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports) | submodules)

    return __getattr__, __dir__
