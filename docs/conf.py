"""Sphinx configuration for the relaxedortho documentation.

Build (warnings are errors; the notebooks under ``notebooks/`` are executed):

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Offline by design: no intersphinx (its inventories live on the web); links to PyTorch, NumPy, SciPy and
geoopt go through :mod:`sphinx.ext.extlinks` roles (``:torch:`...```, ``:numpy:``, ``:scipy:``, ``:geoopt:``).
MathJax is a script URL in the HTML pages, so building needs no network either.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

# Document (and execute the notebooks against) this checkout, not another installed copy.
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
# Notebook kernels inherit the environment: keep them on one thread each and quiet.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")

import relaxedortho  # noqa: E402  (after the path set-up)

# -- project -------------------------------------------------------------------------------------
project = "relaxedortho"
author = "The relaxedortho developers"
copyright = "2026, The relaxedortho developers"
release = relaxedortho.__version__
version = ".".join(release.split(".")[:2])

# -- extensions ----------------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.extlinks",
    "sphinx.ext.viewcode",
    "myst_nb",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = [
    "_build",
    "jupyter_execute",
    "**.ipynb_checkpoints",
    "notebooks/README.md",
]
templates_path: list[str] = []
nitpicky = False

# -- autodoc / napoleon ----------------------------------------------------------------------------
autodoc_default_options = {"members": True, "show-inheritance": True, "member-order": "bysource"}
autodoc_typehints = "signature"  # "description" would merge the class-level `bias: Tensor | None` into the constructor's parameters
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False  # do not pull torch.nn.Module's docstrings into our pages
autoclass_content = "class"
napoleon_google_docstring = True
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_preprocess_types = False

# -- links to other projects' documentation (offline replacement for intersphinx) -----------------
extlinks = {
    "torch": ("https://docs.pytorch.org/docs/stable/%s", "%s"),
    "numpy": ("https://numpy.org/doc/stable/reference/%s", "%s"),
    "scipy": ("https://docs.scipy.org/doc/scipy/reference/%s", "%s"),
    "sklearn": ("https://scikit-learn.org/stable/%s", "%s"),
    "geoopt": ("https://geoopt.readthedocs.io/en/latest/%s", "%s"),
    "hypothesis": ("https://hypothesis.readthedocs.io/en/latest/%s", "%s"),
    "arxiv": ("https://arxiv.org/abs/%s", "arXiv:%s"),
    "doi": ("https://doi.org/%s", "doi:%s"),
}

# -- MyST / myst-nb --------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "cache"  # executed at build time (a fresh clone has an empty cache: all run)
nb_execution_timeout = 180
nb_execution_raise_on_error = True  # a failing cell fails the build
nb_execution_show_tb = True
nb_merge_streams = True
nb_kernel_rgx_aliases = {".*": "python3"}

# -- HTML ------------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"relaxedortho {release}"
html_static_path: list[str] = []
html_theme_options = {"navigation_with_keys": True}


# -- offline cross-references to other projects --------------------------------------------------
# intersphinx would download objects.inv files; instead, unresolved Python references to PyTorch, NumPy,
# SciPy, geoopt and the standard library become plain links built from each project's URL scheme, and
# references to our own objects under another import path (``relaxedortho.maps.AlignmentMap``, a bare
# ``riemannian_lr`` in a docstring) are retried under the public name.
TORCH_DOCS = "https://docs.pytorch.org/docs/stable/"
EXTERNAL_PAGES = {
    "torch.Tensor": TORCH_DOCS + "tensors.html#torch.Tensor",
    "torch.dtype": TORCH_DOCS + "tensor_attributes.html#torch.dtype",
    "torch.device": TORCH_DOCS + "tensor_attributes.html#torch.device",
    "torch._C.Generator": TORCH_DOCS + "generated/torch.Generator.html",
    "torch.nn.modules.module.Module": TORCH_DOCS + "generated/torch.nn.Module.html",
    "torch.nn.modules.linear.Linear": TORCH_DOCS + "generated/torch.nn.Linear.html",
    "os.PathLike": "https://docs.python.org/3/library/os.html#os.PathLike",
    "geoopt.Stiefel": "https://geoopt.readthedocs.io/en/latest/manifolds.html#geoopt.manifolds.Stiefel",
    "geoopt.ManifoldParameter": "https://geoopt.readthedocs.io/en/latest/tensors.html#geoopt.tensor.ManifoldParameter",
    # annotations written against ``from hypothesis import strategies as st``
    "st.SearchStrategy": "https://hypothesis.readthedocs.io/en/latest/reference/strategies.html"
                         "#hypothesis.strategies.SearchStrategy",
}
EXTERNAL_PREFIXES = {
    "torch.": TORCH_DOCS + "generated/{name}.html",
    "numpy.": "https://numpy.org/doc/stable/reference/generated/{name}.html",
    "scipy.": "https://docs.scipy.org/doc/scipy/reference/generated/{name}.html",
    "geoopt.optim.": "https://geoopt.readthedocs.io/en/latest/optimizers.html#{name}",
    "geoopt.": "https://geoopt.readthedocs.io/en/latest/",
    "sklearn.": "https://scikit-learn.org/stable/modules/generated/{name}.html",
    "hypothesis.": "https://hypothesis.readthedocs.io/en/latest/reference/strategies.html#{name}",
}
# Standard-library modules named in our signatures and docstrings: one page per module.
PYTHON_LIBRARY = "https://docs.python.org/3/library/"
STDLIB_MODULES = ("collections.abc", "pathlib", "argparse", "os", "typing", "dataclasses", "json")


def _external_url(target: str) -> str | None:
    if target in EXTERNAL_PAGES:
        return EXTERNAL_PAGES[target]
    for prefix, pattern in EXTERNAL_PREFIXES.items():
        if target.startswith(prefix):
            return pattern.format(name=target)
    for module in STDLIB_MODULES:
        if target.startswith(module + "."):
            return f"{PYTHON_LIBRARY}{module}.html#{target}"
    return None


def _our_object(env, target: str):
    """The one documented object of ours that ``target`` names under another import path, or None.

    ``relaxedortho.maps.AlignmentMap`` -> ``relaxedortho.AlignmentMap``; ``relaxedortho.fit_closed_form`` ->
    ``relaxedortho.closed_form.fit_closed_form``; a bare ``riemannian_lr`` -> ``relaxedortho.riemannian_lr``.
    Ambiguous names (several objects end with it) stay unresolved, silently (``nitpicky`` is off).
    """
    objects = env.get_domain("py").objects
    name = target.removeprefix("relaxedortho.maps.").removeprefix("relaxedortho.")
    exact = [f"relaxedortho.{name}", f"relaxedortho.maps.{name}"]
    found = [c for c in exact if c in objects and c != target]
    if not found:
        found = [full for full in objects if full.startswith("relaxedortho.") and full.endswith("." + name)]
    if not found and "." in name:  # a submodule path (``relaxedortho.training.trainer.default_retrieval_metric``)
        last = name.rsplit(".", 1)[1]
        found = [full for full in objects if full.startswith("relaxedortho.") and full.endswith("." + last)
                 and objects[full].objtype != "module"]
    return (found[0], objects[found[0]]) if len(found) == 1 else None


def _our_package(env, target: str):
    """The documented package of an undocumented submodule (``relaxedortho.closed_form.relaxed`` ->
    ``relaxedortho.closed_form``, whose page section lists the submodule's public names), or None."""
    objects = env.get_domain("py").objects
    package = target.rpartition(".")[0]
    while package.startswith("relaxedortho"):
        if package in objects:
            return package, objects[package]
        package = package.rpartition(".")[0]
    return None


def _resolve_missing(app, env, node, contnode):
    from docutils import nodes
    from sphinx.util.nodes import make_refnode

    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    url = _external_url(target)
    if url is not None:
        ref = nodes.reference("", "", internal=False, refuri=url, reftitle=target)
        ref.append(contnode)
        return ref
    hit = _our_package(env, target) if node.get("reftype") == "mod" else _our_object(env, target)
    if hit is None:
        return None
    fullname, entry = hit
    return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, fullname)


def _drop_type_docstring(app, what, name, obj, options, lines):
    """A constant without a ``#:`` comment (``KINDS = (...)``) would show its type's docstring ("Built-in
    immutable sequence...") as its own: drop it (the reference gives the description in the page)."""
    if what not in ("data", "attribute") or not lines:
        return
    type_doc = getattr(type(obj), "__doc__", None)
    if isinstance(type_doc, str) and type_doc.strip():
        words = [w for line in lines for w in line.split()]
        if words == type_doc.split():
            lines.clear()


def setup(app):
    app.connect("missing-reference", _resolve_missing)
    app.connect("autodoc-process-docstring", _drop_type_docstring, priority=400)  # before napoleon
