"""The plugin manager: bundled plugins, third-party discovery by entry point, safe hook calls."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import re
import warnings
from collections.abc import Callable, Iterable
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from .config import Settings
from .errors import PluginError

log = logging.getLogger("keystage.plugins")

ENTRY_POINT_GROUP = "keystage"
API_VERSION = "1.0"
# A plugin's name is a URL segment (/-/plugins/<name>/) and a template prefix (<name>/...).
PLUGIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# Hook arguments on their way out: {hook: {argument: what to do instead}}. They keep working
# until the next major API version; a plugin implementation naming one gets a
# KeystageDeprecationWarning (once per plugin, hook and argument) that names the plugin.
DEPRECATED_ARGUMENTS: dict[str, dict[str, str]] = {}


class KeystageDeprecationWarning(DeprecationWarning):
    """A plugin uses something of the hook API that a later major version removes."""

# Every bundled plugin, in the order their hooks are called. tests/test_kernel.py checks
# that this covers every package under stages/ and plugins/.
BUNDLED_PLUGINS: tuple[str, ...] = (
    "keystage.plugins.hashers.argon2id",
    "keystage.plugins.policies.superuser_absent",
    "keystage.plugins.policies.expression",
    "keystage.plugins.policies.password",
    "keystage.plugins.policies.password_expiry",
    "keystage.plugins.policies.reputation",
    "keystage.plugins.policies.event_matcher",
    "keystage.plugins.policies.static",
    "keystage.stages.identification",
    "keystage.stages.password",
    "keystage.stages.prompt",
    "keystage.stages.user_write",
    "keystage.stages.user_login",
    "keystage.stages.user_logout",
    "keystage.stages.deny",
    "keystage.stages.redirect",
    "keystage.stages.authenticator_totp",
    "keystage.stages.authenticator_static",
    "keystage.stages.authenticator_validate",
    "keystage.stages.authenticator_webauthn",
    "keystage.stages.consent",
    "keystage.plugins.providers.oidc",
    "keystage.plugins.providers.saml",
)


@dataclasses.dataclass
class PluginInfo:
    name: str
    version: str
    origin: str  # "bundled" or "third-party"
    module: str
    enabled: bool
    hooks: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None


def _keystage_version() -> str:
    try:
        return metadata.version("keystage")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _hook_problem(exc: pluggy.PluginValidationError) -> str:
    # pluggy's message ends with the plugin object's repr, which says nothing useful here.
    text = str(exc)
    return text.split(" in plugin <", 1)[0] + (" (no such hook: check the spelling against docs/plugins/hooks.md)"
                                               if "unknown hook" in text else "")


def _bundled_name(module_name: str) -> str:
    return module_name.removeprefix("keystage.")


class PluginManager:
    """Wraps pluggy: registers plugins under a name, remembers their version and origin."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pm = pluggy.PluginManager("keystage")
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self._order: list[str] = []
        self._deprecations_warned: set[tuple[str, str, str]] = set()

    # -- loading -------------------------------------------------------------------

    def load(self, *, extra: Iterable[tuple[str, ModuleType | object]] = ()) -> None:
        """Register bundled plugins, then enabled third-party ones; raise PluginError on any problem."""
        version = _keystage_version()
        for module_name in BUNDLED_PLUGINS:
            module = importlib.import_module(module_name)
            self._register(_bundled_name(module_name), module, version, "bundled")
        for entry_point in self._entry_points():
            name = entry_point.name
            dist_version = entry_point.dist.version if entry_point.dist else "unknown"
            if not self.settings.plugin_enabled(name):
                self.infos[name] = PluginInfo(name, dist_version, "third-party", entry_point.value, enabled=False)
                continue
            try:
                module = entry_point.load()
            except Exception as exc:
                raise PluginError(
                    f"plugin {name} {dist_version}: cannot be imported: {type(exc).__name__}: {exc}"
                ) from None
            self._check_api(name, dist_version, module)
            self._register(name, module, dist_version, "third-party")
        for name in self.settings.plugins:
            if name != "*" and name not in self.infos:
                raise PluginError(f"KEYSTAGE_PLUGINS: plugin {name!r} is not installed (no entry point in group 'keystage')")
        for name, plugin in extra:
            self._register(name, plugin, getattr(plugin, "__version__", "test"), "third-party")
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            name = self._name_of(exc.plugin)
            info = self.infos.get(name)
            version = f" {info.version}" if info else ""
            raise PluginError(f"plugin {name}{version}: {_hook_problem(exc)}") from None
        self._check_configs()

    def register(self, name: str, plugin: object, version: str = "test") -> None:
        """Register one more plugin at run time (used by the test kit)."""
        self._register(name, plugin, version, "third-party")
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.unregister(name)
            raise PluginError(f"plugin {name} {version}: {_hook_problem(exc)}") from None

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.infos.pop(name, None)
        if name in self._order:
            self._order.remove(name)

    def _entry_points(self) -> list[metadata.EntryPoint]:
        points = metadata.entry_points(group=ENTRY_POINT_GROUP)
        unique = {ep.name: ep for ep in points}
        return [unique[name] for name in sorted(unique)]

    def _check_api(self, name: str, version: str, module: object) -> None:
        wanted = getattr(module, "KEYSTAGE_API", None)
        if wanted is None:
            return
        from packaging.specifiers import InvalidSpecifier, SpecifierSet

        try:
            spec = SpecifierSet(str(wanted))
        except InvalidSpecifier:
            raise PluginError(f"plugin {name} {version}: KEYSTAGE_API {wanted!r} is not a version range") from None
        if API_VERSION not in spec:
            raise PluginError(
                f"plugin {name} {version} supports keystage API {wanted}, this keystage offers {API_VERSION}: "
                f"install a version of {name} made for keystage API {API_VERSION}"
            )

    def _register(self, name: str, plugin: object, version: str, origin: str) -> None:
        if origin != "bundled" and not PLUGIN_NAME.match(name):
            raise PluginError(
                f"plugin {name!r} {version}: a plugin name is 1-64 letters, digits, '.', '_' or '-' "
                "(it becomes a URL segment and a template prefix)"
            )
        try:
            self.pm.register(plugin, name=name)
        except ValueError as exc:
            raise PluginError(f"plugin {name} {version}: {exc}") from None
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {name} {version}: {exc}") from None
        hooks = sorted(
            caller.name for caller in self.pm.get_hookcallers(plugin) or [] if not caller.name.startswith("_")
        )
        module = getattr(plugin, "__name__", type(plugin).__module__)
        self.infos[name] = PluginInfo(name, version, origin, module, enabled=True, hooks=hooks)
        self._order.append(name)

    def _name_of(self, plugin: object) -> str:
        return self.pm.get_name(plugin) or repr(plugin)

    def _check_configs(self) -> None:
        for name, table in self.settings.plugin_config.items():
            if name not in self.infos or not self.infos[name].enabled:
                raise PluginError(f"[plugin.{name}]: no enabled plugin of that name")
        # Fail closed: a plugin whose config check crashes does not start with an unchecked config.
        for name, problems in self.call_each(
            "check_config", per_plugin={"config": self.settings.plugin_config}, raise_errors=True
        ):
            if problems:
                if not isinstance(problems, list):
                    problems = [f"check_config returned {type(problems).__name__}, not a list"]
                info = self.infos[name]
                raise PluginError(f"plugin {name} {info.version}: plugin.{name}.{problems[0]}")

    # -- calling ---------------------------------------------------------------------

    def list(self) -> list[PluginInfo]:
        enabled = [self.infos[n] for n in self._order]
        disabled = sorted((i for i in self.infos.values() if not i.enabled), key=lambda i: i.name)
        return enabled + disabled

    def _impls(self, hook_name: str) -> list[pluggy.HookImpl]:
        caller = getattr(self.pm.hook, hook_name)
        impls = caller.get_hookimpls()
        position = {name: index for index, name in enumerate(self._order)}

        def key(impl: pluggy.HookImpl) -> tuple[int, int]:
            band = 0 if impl.tryfirst else 2 if impl.trylast else 1
            return band, position.get(impl.plugin_name, len(position))

        return sorted(impls, key=key)

    def call_each(
        self, hook_name: str, *, per_plugin: dict[str, dict[str, Any]] | None = None, raise_errors: bool = False,
        **kwargs: Any,
    ) -> list[tuple[str, Any]]:
        """Call a synchronous hook on each plugin in plugin order; return ``[(plugin_name, answer)]``.

        A plugin whose implementation raises (or returns a coroutine from a sync hook) is
        logged by name and left out of the answers: the other plugins still answer. With
        ``raise_errors`` an exception is a ``PluginError`` naming the plugin instead.
        ``per_plugin`` maps an argument name to ``{plugin_name: value}`` (default ``{}``).
        """
        answers = []
        for impl in self._impls(hook_name):
            args = self._arguments(hook_name, impl, kwargs, per_plugin)
            try:
                result = impl.function(**args)
            except Exception as exc:
                if raise_errors:
                    info = self.infos.get(impl.plugin_name)
                    raise PluginError(
                        f"plugin {impl.plugin_name} {info.version if info else '?'}: {hook_name} failed: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                log.exception("plugin %s: hook %s raised; its answer is ignored", impl.plugin_name, hook_name)
                continue
            if inspect.isawaitable(result):
                log.error("plugin %s: hook %s must not be async; its answer is ignored", impl.plugin_name, hook_name)
                if inspect.iscoroutine(result):
                    result.close()
                continue
            answers.append((impl.plugin_name, result))
        return answers

    async def acall_each(self, hook_name: str, *, raise_errors: bool = False, **kwargs: Any) -> list[tuple[str, Any]]:
        """Like ``call_each`` for hooks that may be async: coroutines are awaited one by one."""
        answers = []
        for impl in self._impls(hook_name):
            args = self._arguments(hook_name, impl, kwargs, None)
            try:
                result = impl.function(**args)
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:
                if raise_errors:
                    info = self.infos.get(impl.plugin_name)
                    version = info.version if info else "?"
                    raise PluginError(
                        f"plugin {impl.plugin_name} {version}: {hook_name} failed: {type(exc).__name__}: {exc}"
                    ) from exc
                log.exception("plugin %s: hook %s raised; its answer is ignored", impl.plugin_name, hook_name)
                continue
            answers.append((impl.plugin_name, result))
        return answers

    def _arguments(
        self, hook_name: str, impl: pluggy.HookImpl, kwargs: dict[str, Any],
        per_plugin: dict[str, dict[str, Any]] | None,
    ) -> dict[str, Any]:
        deprecated = DEPRECATED_ARGUMENTS.get(hook_name, {})
        args = {}
        for argname in impl.argnames:
            if argname in deprecated:
                self._warn_deprecated(impl.plugin_name, hook_name, argname, deprecated[argname])
            if per_plugin and argname in per_plugin:
                args[argname] = dict(per_plugin[argname].get(impl.plugin_name, {}))
            else:
                args[argname] = kwargs[argname]
        return args

    def _warn_deprecated(self, plugin_name: str, hook_name: str, argname: str, instead: str) -> None:
        key = (plugin_name, hook_name, argname)
        if key in self._deprecations_warned:
            return
        self._deprecations_warned.add(key)
        info = self.infos.get(plugin_name)
        message = (
            f"plugin {plugin_name} {info.version if info else '?'}: hook {hook_name}: argument {argname!r} is "
            f"deprecated and goes away in keystage API {int(API_VERSION.split('.')[0]) + 1}.0; {instead}"
        )
        log.warning("%s", message)
        warnings.warn(message, KeystageDeprecationWarning, stacklevel=2)

    def collect(
        self, hook_name: str, item_check: Callable[[Any], bool], what: str, **kwargs: Any
    ) -> list[tuple[str, Any]]:
        """Flatten the list answers of a ``register_*`` hook into ``[(plugin_name, item)]``.

        Items failing ``item_check`` are logged with the plugin's name and dropped.
        """
        items = []
        for name, answer in self.call_each(hook_name, **kwargs):
            if answer is None:
                continue
            for item in answer if isinstance(answer, (list, tuple)) else [answer]:
                if item_check(item):
                    items.append((name, item))
                else:
                    log.error("plugin %s: %s returned %r, which is not %s; ignored", name, hook_name, item, what)
        return items
