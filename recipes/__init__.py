"""Recipes shipped with modtrain (TOML files, found by name)."""
