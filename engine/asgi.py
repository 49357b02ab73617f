"""The ASGI app of a worker process (``supervisor.worker``), or for any ASGI server: ``keystage.engine.asgi:app``.

``keystage serve`` resolves the settings in the parent and passes them to the workers
through the environment (and the embedded database URL through an internal variable).
"""

from __future__ import annotations

import os

from .app import create_app
from .config import load_settings
from .logs import configure

settings = load_settings(os.environ)
configure(settings.log_level)
app = create_app(settings)
