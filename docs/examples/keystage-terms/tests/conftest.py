"""keystage's test kit (``keystage.engine.testing``) is a pytest plugin: its fixtures are already here.

This file only says which installed plugin the tests are about: with it enabled, every test
database has the plugin's migrations applied. Run: ``pip install -e . && pytest``
(``KEYSTAGE_TEST_DATABASE_URL=postgresql://...`` to use a server you have, else an embedded one).
"""

import pytest


@pytest.fixture(scope="session")
def keystage_plugins() -> list[str]:
    return ["terms"]
