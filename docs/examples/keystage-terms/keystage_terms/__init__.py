"""keystage-terms: users accept the terms of service (a versioned text) before they sign in.

A complete third-party keystage plugin: one stage type with its config model, template,
translations (German, French) and its own table through a migration. It imports only
``keystage.engine`` (the public API).
"""

from __future__ import annotations

from pathlib import Path

from keystage.engine import hookimpl

from .stage import TermsConfig, TermsStage

__all__ = ["KEYSTAGE_API", "TermsConfig", "TermsStage"]
__version__ = "1.0.0"

# The keystage plugin API versions this plugin works with; any other is refused at startup.
KEYSTAGE_API = ">=1.0,<2"

HERE = Path(__file__).parent


@hookimpl
def register_stage_types() -> list[type]:
    return [TermsStage]


@hookimpl
def register_migrations() -> Path:
    return HERE / "sql"


@hookimpl
def register_locales() -> list[tuple[str, Path]]:
    return [("keystage_terms", HERE / "locales")]
