"""NMN modules, one per file, registered by name."""
