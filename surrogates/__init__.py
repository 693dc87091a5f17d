"""Surrogate gradient modules (paper §3.3), registered by name (see modtrain.registry)."""
from modtrain.surrogates import factorized  # noqa: F401  (registers it)
