"""modtrain: train neural module networks module by module.

See docs/design.md for the architecture: typed modules, surrogate gradient modules,
virtual datasets (caches) and the assembler.
"""
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("modtrain")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from modtrain.errors import ModtrainError

__all__ = ["ModtrainError", "__version__"]
