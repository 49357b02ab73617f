"""Bundled password hashers."""
