"""Bundled provider protocol plugins (OpenID Connect, ...)."""
