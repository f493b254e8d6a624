"""Reusable test helpers: :mod:`relaxedortho.testing.strategies` holds hypothesis strategies.

Importing this package needs ``hypothesis`` (the ``test`` extra).
"""
from . import strategies

__all__ = ["strategies"]
