"""Reusable test helpers: :mod:`relaxedortho.testing.strategies` holds hypothesis strategies,
:mod:`relaxedortho.testing.maps` the tagged registry of map variants that test suites derive their lists from.

Importing this package needs ``hypothesis`` (the ``test`` extra).
"""
from . import maps, strategies

__all__ = ["maps", "strategies"]
