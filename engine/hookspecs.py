"""Every hook keystage calls. Each docstring here is the plugin-author documentation.

docs/plugins/hooks.md is generated from these docstrings (``python docs/plugins/build_hooks.py``)
and a test keeps the two identical. Conventions:

* Hook names are verb-first. Arguments are keyword-only; a hook gains arguments over
  time and never changes the meaning of one (a plugin may accept fewer arguments than
  the spec lists: pluggy passes only those it names). An argument on its way out keeps
  working until the next major API version and warns (``KeystageDeprecationWarning``,
  naming the plugin) when an implementation accepts it.
* ``register_*`` hooks return a list (or a single item, or ``None``); the kernel
  collects the answers of every plugin, in plugin order: bundled plugins in their tuple
  order, then third-party plugins by name (``tryfirst=True`` / ``trylast=True`` on a
  ``hookimpl`` move a plugin ahead of / behind the others). None of them use ``firstresult``.
* Hooks marked *may be async* may be implemented with ``async def``; the kernel awaits.
  The others must be plain functions: a coroutine from them is logged and ignored.
* A hook implementation that raises, or returns something of the wrong type, is logged
  with the plugin's name and treated as if it had answered nothing (fail closed): it
  never takes the kernel or other plugins down. Where an answer nothing would be unsafe
  (``check_config``, ``before_serving``, expression helpers), the failure stops startup
  with a line naming the plugin instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from quart import Blueprint, Quart

    from .config import Settings
    from .events import Event
    from .passwords import PasswordHasher
    from .runtime import Keystage

hookspec = pluggy.HookspecMarker("keystage")
hookimpl = pluggy.HookimplMarker("keystage")


@hookspec
def register_stage_types() -> list[type] | None:
    """Stage types this plugin provides.

    Called once at startup. Return a list of stage classes (subclasses of
    ``keystage.engine.Stage``), each with a unique ``type_name``. Two plugins
    registering the same ``type_name`` is a startup error naming both.

    Added in: 1.0
    """


@hookspec
def register_policy_types() -> list[type] | None:
    """Policy types this plugin provides (classes with a unique ``type_name``).

    Called once at startup; the same uniqueness rule as ``register_stage_types``.

    Added in: 1.0
    """


@hookspec
def register_provider_types() -> list[type] | None:
    """Provider protocol types this plugin provides (OpenID Connect, SAML, ...).

    Called once at startup; the same uniqueness rule as ``register_stage_types``.

    Added in: 1.0
    """


@hookspec
def register_source_types() -> list[type] | None:
    """Source protocol types (upstream identity providers) this plugin provides.

    Called once at startup; the same uniqueness rule as ``register_stage_types``.

    Added in: 1.0
    """


@hookspec
def register_routes() -> list[Blueprint] | None:
    """Quart blueprints to mount on the application.

    Called once while the app is created. Every plugin's blueprints are registered;
    a route that collides with one already registered is a startup error.

    Added in: 1.0
    """


@hookspec
def register_migrations() -> Path | list[Path] | None:
    """Directories of numbered SQL migrations (``NNNN_description.sql``) owned by this plugin.

    Called by ``keystage migrate`` and at ``keystage serve`` start. Files are applied in
    number order, each in its own transaction, and recorded under the plugin's name,
    so numbers only need to be unique within one plugin. The kernel's own migrations
    run first, then plugins' in plugin order.

    Added in: 1.0
    """


@hookspec
def register_locales() -> list[tuple[str, Path]] | None:
    """Gettext catalogs this plugin ships: a list of ``(domain, locales_directory)``.

    ``locales_directory`` holds ``<lang>/LC_MESSAGES/<domain>.po`` (read as is: no compile step). A plugin's
    domain must be its own: the kernel's ``keystage`` domain cannot be replaced.

    Added in: 1.0
    """


@hookspec
def register_expression_helpers() -> dict[str, Any] | None:
    """Names to offer to admin-written expressions: ``{name: callable_or_value}``.

    Called once at startup. Names must be valid identifiers that do not start with an
    underscore; a name registered by two plugins is a startup error naming both.

    Expressions run in separate sandbox worker processes, so each value must travel there:
    a module-level function importable by its module and name (or the string
    ``"package.module:function"``), or plain JSON data. Anything else (a lambda, a bound
    method, an object) is refused at startup naming the plugin. A helper's arguments and
    its answer are plain data; the answer is frozen before the expression sees it.

    Added in: 1.0
    """


@hookspec
def register_password_hashers(settings: Settings) -> list[PasswordHasher] | None:
    """Password hashers (objects following ``keystage.engine.PasswordHasher``), built from ``settings``.

    The first hasher of the first plugin to answer hashes new passwords (the bundled
    Argon2id hasher is registered with ``trylast=True`` so that a plugin may replace it);
    every registered hasher may verify a stored hash it recognises, and a hash made by
    a hasher other than the first is upgraded at the next successful login.

    Added in: 1.0
    """


@hookspec
def check_config(config: dict[str, Any]) -> list[str] | None:
    """Validate this plugin's configuration.

    ``config`` is the ``[plugin.<name>]`` table of the TOML config file (an empty dict
    when there is none). Called once at startup, for each enabled plugin with its own
    table. Return a list of problems, each ``"key: what is wrong"``; any problem stops
    startup with a line naming the plugin, its version and the key.

    Added in: 1.0
    """


@hookspec
def before_serving(app: Quart) -> None:
    """Called in each worker after the database pool is open, before the first request.

    May be async. ``app.extensions["keystage"]`` is the running ``Keystage`` instance.
    An exception stops the worker's startup with a message naming the plugin.

    Added in: 1.0
    """


@hookspec
def after_serving(app: Quart) -> None:
    """Called in each worker at shutdown, before the database pool is closed.

    May be async. Exceptions are logged with the plugin's name and do not stop the
    shutdown of other plugins.

    Added in: 1.0
    """


@hookspec
def on_event(event: Event, keystage: Keystage) -> None:
    """Called for every event recorded in the audit log, after it is stored.

    ``keystage`` is the running kernel (its pool, key-value store, users), so a listener
    can keep its own state; accept only the arguments you need.

    May be async. Runs after the request that caused the event has its answer decided;
    an exception is logged with the plugin's name and changes nothing else.

    Added in: 1.0
    """
