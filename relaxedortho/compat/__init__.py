"""Compatible-learning methods side by side: maps between frozen models, forward transformations, training-free
query interpolation, and methods that train the new model; one class-extension protocol and a benchmark.

- :mod:`~relaxedortho.compat.slerp`: training-free SLERP backward compatibility (Ricci et al. 2026);
- :mod:`~relaxedortho.compat.fct`: FCT (Ramanujan et al. 2022) and FastFill (Jaeckle et al. 2023);
- :mod:`~relaxedortho.compat.bct`: BCT's influence loss with the synthesised old classifier (Shen et al. 2020);
- :mod:`~relaxedortho.compat.oca`: OCA's orthogonal transformation layer (Ricci et al. 2024);
- :mod:`~relaxedortho.compat.bt2`: BT²'s basis transformations (Zhou et al. 2023);
- :mod:`~relaxedortho.compat.protocol`: the class-extension protocol (data, old/new CNNs, retrieval);
- :func:`~relaxedortho.training.train_module` (the training package's mini-batch loop) trains every method that learns;
- :mod:`~relaxedortho.compat.bench`: :func:`run_compat_bench`, ``relaxedortho compat-bench``.

The Procrustes and λ-orthogonal reference rows come from :func:`relaxedortho.fit_closed_form` and
:func:`relaxedortho.fit_pair`. Nothing here is imported by ``import relaxedortho``.
"""
from .bct import bct_loss, class_means, synthesized_classifier
from .bt2 import BT2Model, BasisTransformation, bt2_loss
from .fct import (FastFillTransformation, FCTTransformation, fastfill_loss, fct_loss, fit_fastfill, fit_fct,
                  uncertainty_order)
from .oca import OCAModel, oca_loss
from .slerp import SlerpCompatibility, fit_slerp, slerp
from ..training.minibatch import train_module


def __getattr__(name: str):
    # the benchmark and the protocol pull in scikit-learn and matplotlib: load them on first use
    if name in ("run_compat_bench", "format_table"):
        from . import bench

        return getattr(bench, name)
    if name in ("build_protocol", "protocol_config", "ProtocolConfig", "ClassExtension", "SmallCNN"):
        from . import protocol

        return getattr(protocol, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["slerp", "fit_slerp", "SlerpCompatibility", "FCTTransformation", "FastFillTransformation", "fct_loss",
           "fastfill_loss", "fit_fct", "fit_fastfill", "uncertainty_order", "synthesized_classifier", "class_means",
           "bct_loss", "OCAModel", "oca_loss", "BasisTransformation", "BT2Model", "bt2_loss", "train_module",
           "run_compat_bench", "format_table", "build_protocol", "protocol_config", "ProtocolConfig",
           "ClassExtension", "SmallCNN"]
