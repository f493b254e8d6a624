"""Import geoopt without its import-time DeprecationWarnings.

geoopt 0.5.1 decorates helpers with ``torch.jit.script``, which recent PyTorch deprecates: about 73
warnings at import, which flood pytest and break ``-W error``. They say nothing about the user's code,
so they are silenced for the import alone.
"""
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", FutureWarning)
    import geoopt  # noqa: E402

__all__ = ["geoopt"]
