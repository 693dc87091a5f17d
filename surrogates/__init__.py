"""Surrogate gradient modules (paper §3.3)."""
