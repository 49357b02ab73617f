"""Bundled policy types."""
