"""NMN modules, one per file, registered by name (see modtrain.registry)."""
from modtrain.modules import compare, describe, encoder, film, find, lnmn, logic, measure, relate, snmn  # noqa: F401  (registers them)
