r"""Riemannian tools on the orthogonal group and the Stiefel manifold (``docs/math.md`` §10–§14).

- :mod:`~relaxedortho.riemannian.geodesics`: the principal logarithm of a rotation (:func:`skew_log`), log/exp maps
  at a point, geodesics and the geodesic distance on O(n);
- :mod:`~relaxedortho.riemannian.stiefel`: exponential (canonical and Euclidean metrics), logarithm (canonical,
  Zimmermann's algorithm) and geodesics on St(n, p);
- :mod:`~relaxedortho.riemannian.cayley_chart`: the Cayley chart and its inverse;
- :mod:`~relaxedortho.riemannian.means`: Karcher and chordal means, weighted;
- :mod:`~relaxedortho.riemannian.merging`: task arithmetic, TIES and OrthoMerge on tensors and models;
- :mod:`~relaxedortho.riemannian.rebasin`: weight matching of two MLPs (Git Re-Basin) and hidden-unit permutations;
- :mod:`~relaxedortho.riemannian.adapters`: orthogonal-basis adapters and their interference;
- :mod:`~relaxedortho.riemannian.group`: components of O(n) and the nearest matrix in a component.

Everything takes float32 or float64 tensors on any device, computes in float64 and returns the input dtype; the
matrix functions accept batches ``(..., n, n)``. SciPy (for the linear assignments of re-basin) is imported only when
used.
"""
from .adapters import adapter_interference, orthogonal_adapter_bases
from .cayley_chart import cayley, cayley_inverse
from .geodesics import distance, exp_map, geodesic, log_map, skew_log
from .group import check_orthogonal, determinant_sign, special_polar
from .means import CONVEXITY_RADIUS, KarcherMean, chordal_mean, karcher_mean
from .merging import (decouple_orthogonal, merge_models, norm_corrected_average, orthomerge, task_arithmetic,
                      ties_merge)
from .rebasin import WeightMatching, permute_hidden_units, weight_matching
from .stiefel import stiefel_exp, stiefel_geodesic, stiefel_log

__all__ = ["skew_log", "log_map", "exp_map", "geodesic", "distance", "stiefel_exp", "stiefel_log",
           "stiefel_geodesic", "cayley", "cayley_inverse", "karcher_mean", "chordal_mean", "KarcherMean",
           "CONVEXITY_RADIUS", "task_arithmetic", "ties_merge", "norm_corrected_average", "decouple_orthogonal",
           "orthomerge", "merge_models", "weight_matching", "permute_hidden_units", "WeightMatching",
           "orthogonal_adapter_bases", "adapter_interference", "check_orthogonal", "determinant_sign",
           "special_polar"]
