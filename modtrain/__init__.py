"""modtrain: train neural module networks module by module.

See docs/design.md for the architecture: typed modules, surrogate gradient modules,
virtual datasets (caches) and the assembler.
"""
import os
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("modtrain")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# Large CPU tensors in transparent huge pages: PyTorch's own switch, read at its first allocation,
# so it is set before anything imports torch (a value the user set is kept). Without it each
# fresh batch of features faults its memory in 4 KiB pages: on a 2-core CPU, converting a batch
# of 256 ResNet-shaped float16 feature maps to float32 spent ~70% of its time on page faults
# (docs/results.md, the CLEVR-size data path).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from modtrain.errors import ModtrainError  # noqa: E402

__all__ = ["ModtrainError", "__version__"]
