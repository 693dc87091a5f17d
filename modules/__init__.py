"""NMN modules, one per file, registered by name (see modtrain.registry)."""
from modtrain.modules import describe, encoder, find, logic, measure  # noqa: F401  (registers them)
