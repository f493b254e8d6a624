r"""Metrics of (compatible) retrieval: CMC, mAP, compatibility matrices, AC/AM and backfilling curves; and of a
map's fit and preserved geometry (:func:`fit_mse` in ``fit_error.py``; :func:`neighbour_agreement` and
:func:`gram_distortion` in ``geometry.py``).

Every retrieval metric ranks a labelled gallery for each labelled query by **cosine similarity** of the
L2-normalised features, :math:`s_{qg} = \langle \hat q, \hat g\rangle`, :math:`\hat x = x/\lVert x\rVert_2`
(a zero vector stays zero and has similarity 0 with everything). Each row is first divided by its largest
absolute entry, :math:`\hat x = \tilde x/\lVert\tilde x\rVert_2` with :math:`\tilde x = x/\lVert x\rVert_\infty`, so the
norm never overflows or underflows: every metric is invariant to a positive scale of any row, for every finite
input (float32 features of size 1e30 or 1e-30 rank exactly as at size 1). A gallery item is *relevant* to a query
when both carry the same label.

Conventions (stated once, used by every function here):

- **Leave-one-out.** With ``leave_one_out=True`` the query set *is* the gallery (same length required) and
  query :math:`i` never retrieves gallery item :math:`i`.
- **Queries without a relevant item** (their label is absent from the gallery, or with leave-one-out the
  only item of their class is themselves) are left out of every average; their number is reported in
  :class:`RetrievalReport` (``n_without_relevant``). If no query has a relevant item a ``ValueError`` is
  raised before any similarity is computed.
- **Ties are broken pessimistically**: among gallery items with exactly equal similarity, the non-relevant
  ones are ranked before the relevant ones. The result is therefore independent of the gallery's order,
  and a constant feature (all similarities equal) gets the worst score, never a lucky one. (Among tied
  relevant items the order does not change any metric.)
- **Chunked computation.** Queries are processed in chunks of ``chunk_size`` rows on the features' device;
  memory is :math:`O(\text{chunk} \times n_\text{gallery})`, so a :math:`10^5 \times 10^5` similarity
  matrix never materialises (besides it, one normalised copy of the features is made). No full sort is
  needed: CMC counts, per query, the non-relevant items scoring at least the best relevant one; AP buckets
  the similarities between the sorted relevant similarities (``searchsorted``), at most
  :math:`O(n_\text{gallery}\log R)` per query for :math:`R` relevant items; on CPU only the similarities
  above the worst relevant one are searched, so for good features mAP costs about as much as CMC.

Definitions (docs/math.md §7). With :math:`u_1 \ge \dots \ge u_R` the similarities of the :math:`R` relevant
items of a query and :math:`N(u)` the number of non-relevant items with similarity :math:`\ge u`, the
(pessimistic) rank of the :math:`t`-th relevant item is :math:`t + N(u_t)`, so

.. math::

    \text{CMC@}k = \frac{1}{|Q|}\sum_{q\in Q} \mathbb 1[1 + N(u_1) \le k], \qquad
    \text{AP} = \frac1R \sum_{k} P@k\,\mathrm{rel}(k) = \frac1R\sum_{t=1}^R \frac{t}{t + N(u_t)},
    \qquad \text{mAP} = \frac{1}{|Q|}\sum_{q\in Q}\text{AP}_q .

Sources: CMC and mAP as in person re-identification (Zheng et al., ICCV 2015); the compatibility criterion
from Shen et al., "Towards Backward-Compatible Representation Learning", CVPR 2020; AC and AM from Biondi
et al., "CoReS: Compatible Representations via Stationarity", TPAMI 2023; the evaluation protocol of
Ricci et al., arXiv 2509.16664 (2025).

>>> import torch
>>> q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
>>> g = torch.tensor([[1.0, 0.1], [0.0, 1.0], [1.0, 1.0]])
>>> cmc(q, g, [0, 1], [1, 1, 0], topk=(1, 2))
{1: 0.5, 2: 1.0}
"""
from .backfilling import BackfillingCurve, backfilling_curve, backfilling_order
from .compatibility import (average_compatibility, average_multimodel_accuracy, compatibility_matrix,
                            compatibility_matrix_from_models, empirical_compatibility)
from .fit_error import fit_mse
from .geometry import gram_distortion, neighbour_agreement
from .retrieval import RetrievalReport, cmc, mean_average_precision, retrieval_report

__all__ = [
    "RetrievalReport", "retrieval_report", "cmc", "mean_average_precision",
    "compatibility_matrix", "compatibility_matrix_from_models", "empirical_compatibility",
    "average_compatibility", "average_multimodel_accuracy",
    "BackfillingCurve", "backfilling_order", "backfilling_curve",
    "fit_mse", "neighbour_agreement", "gram_distortion",
]
