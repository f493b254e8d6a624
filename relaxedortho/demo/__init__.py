r"""The demo: backward-compatible retrieval on real data, across the spectrum of maps.

Scenario (class extension, Ricci et al., "λ-Orthogonality Regularization for Compatible Representation
Learning", NeurIPS 2025, arXiv 2509.16664, Sec. 4 and Table 1a; Shen et al., "Towards backward-compatible
representation learning", CVPR 2020, for the protocol):

1. An **old** model (a small MLP, one hidden layer) is trained on the images of half of the classes; a
   **new** model (another seed, one more hidden layer; same feature width by default) on all classes.
   Both are then frozen. Features are their L2-normalised embeddings (the layer before the classifier).
2. Held-out images are split into a query set and a gallery set (stratified). The gallery is embedded
   once with the old model ("old gallery"); queries come from the new model.
3. Backward maps :math:`B:` new → old are fitted on the training images' paired features
   (:math:`\min_B \tfrac1n\sum_i \lVert B(h^{new}_i) - h^{old}_i\rVert^2`, docs/math.md §6), across the spectrum:
   closed-form orthogonal Procrustes (Schönemann 1966), a trained hard orthogonal map
   (:class:`~relaxedortho.OrthogonalLinear`), λ-orthogonal maps (:class:`~relaxedortho.LambdaOrthoLinear`)
   for several λ, the free affine map (trained and in closed form), and the nested relaxed *band*
   maps :math:`\sigma_i(W)\in[\sqrt{(1-\varepsilon)_+}, \sqrt{1+\varepsilon}]` (docs/math.md §5). A forward map
   :math:`F:` old → new-aligned space is fitted to :math:`\lVert F(h^{old}) - B_\perp(h^{new})\rVert^2`.
   Trained maps are default-constructed and handed to :func:`~relaxedortho.fit_alignment` with epochs, batch
   size and (by default) the library's learning rate: training starts from the library's data-driven start
   (:mod:`relaxedortho.training.initialization`: Procrustes for hard maps, the relaxed closed form at radius λ
   or centred Procrustes for λ maps, least squares for affine maps).
4. Retrieval (cosine similarity, CMC top-k and mAP, docs/math.md §7) is measured for old/old, new/old
   (unmapped; only when the widths agree), new/new, and per map :math:`B(new)/old` (query mapped,
   old gallery) and :math:`B(new)/B(new)` (both mapped). A map is *compatible* when
   :math:`M(B(\phi^Q_{new}), \phi^G_{old}) > M(\phi^Q_{old}, \phi^G_{old})` (Shen et al. 2020).

The ``"text"`` dataset is the **model-upgrade** scenario on real pretrained encoders: steps 1–2 are replaced by
the shipped embeddings of :mod:`relaxedortho.datasets` (old: all-MiniLM-L6-v2, new: multilingual-e5-small, on
Debian package descriptions; short descriptions are the queries, long ones the gallery, a query's relevant
document is its own package's), and steps 3–4 run unchanged on them; no model is trained.

Band maps are the library's band-constrained relaxed Procrustes
(:func:`~relaxedortho.closed_form.relaxed.solve_relaxed_band`, centred, solved to a relative KKT residual of
1e-10; see :func:`fit_band_path`): the bands are nested, so a looser band never fits the training pairs worse.

Guarantees checked by the tests: a square orthogonal map without bias preserves every cosine similarity, so
:math:`B(new)/B(new)` equals new/new exactly (up to ties); the band path is monotone.

Call :func:`run_demo` or ``relaxedortho demo``; the report (``report.json``) and the plot of the λ
trade-off (``lambda_tradeoff.png``) go to the output folder.

The package: ``config.py`` (:class:`DemoConfig`, :func:`scenario`), ``image_models.py`` (the MLPs),
``image_scenario.py`` and ``text_scenario.py`` (steps 1–2 per data set), ``band_path.py`` (:func:`fit_band_path`),
``spectrum.py`` (steps 3–4: every map, the report), ``report.py`` (plot and table), ``run.py`` (:func:`run_demo`).
"""
from .band_path import fit_band_path
from .config import DemoConfig, scenario
from .image_models import MLP
from .report import PLOT_NAME, REPORT_NAME, format_table
from .run import run_demo

__all__ = ["run_demo", "scenario", "DemoConfig", "MLP", "fit_band_path", "format_table", "REPORT_NAME", "PLOT_NAME"]
