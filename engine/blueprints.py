"""Blueprints: the configuration (flows, stages, bindings, policies, groups, users) as YAML.

A blueprint v1 is ``{version: 1, metadata: {name}, entries: [{model, identifiers, attrs, state}]}``.
``identifiers`` pick a row, ``attrs`` set its fields, ``state`` says what to do with it
(``present``: create or update, ``created``: create only if missing, ``absent``: delete).
Two tags: ``!Find [model, {field: value}]`` is the id of one existing row (resolved when
its entry is applied, so earlier entries are visible) and ``!Env NAME`` / ``!Env [NAME,
default]`` is an environment variable (read when the file is loaded).

``apply`` runs every entry of every given blueprint in one transaction: the first error
rolls back everything and raises a ``BlueprintError`` naming the file, the entry, the
model and the field. ``export`` writes the configuration back, references as ``!Find``,
so that export → apply on an empty database reproduces it. ``apply_defaults`` applies
the shipped ``default_blueprints/*.yaml`` once per database.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import asyncpg
import pydantic
import pydantic_core
import yaml

from . import events
from .errors import KeystageError
from .users import UserError, validate_email, validate_username

if TYPE_CHECKING:
    from .runtime import Keystage

log = logging.getLogger("keystage.blueprints")

VERSION = 1
DEFAULTS_DIRECTORY = Path(__file__).parent / "default_blueprints"
# Taken (per transaction) by every apply, so that two workers applying the defaults at
# the same start, or two admins applying at once, queue up instead of colliding.
ADVISORY_LOCK_ID = 0x6B736270  # "ksbp"
STATES = ("present", "created", "absent")
MAX_SIZE = 10 * 1024 * 1024
# Aliases let a small file describe a huge tree ("billion laughs"); copying stops here.
MAX_VALUES = 200_000


class BlueprintError(KeystageError):
    """A blueprint cannot be loaded or applied. ``str()`` is one line:
    ``file: entries[3] (stage): config.user_fields: problem``."""

    def __init__(self, source: str, problem: str, *, entry: int | None = None, model: str | None = None,
                 field: str | None = None) -> None:
        self.source = source
        self.entry = entry
        self.model = model
        self.field = field
        self.problem = problem
        where = source
        if entry is not None:
            where += f": entries[{entry}]" + (f" ({model})" if model else "")
        text = f"{where}: {field}: {problem}" if field else f"{where}: {problem}"
        super().__init__(" ".join(text.split()))


class _EntryError(Exception):
    """Raised inside an entry; turned into a BlueprintError that names file and entry."""

    def __init__(self, field: str | None, problem: str) -> None:
        self.field = field
        self.problem = problem


class _NotFound(_EntryError):
    """A reference or ``!Find`` matched nothing."""


# -- tags ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Find:
    """``!Find [model, {field: value}]``: the id of the one row of ``model`` matching ``query``."""

    model: str
    query: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class _Env:
    name: str
    default: Any = None
    has_default: bool = False


class _Id(int):
    """A row id that came from ``!Find`` (a plain integer in a reference field is refused),
    with the model it is an id of, so that a stage's id never lands in a flow field."""

    model: str

    def __new__(cls, value: int, model: str) -> _Id:
        instance = super().__new__(cls, value)
        instance.model = model
        return instance


class _Loader(yaml.SafeLoader):
    """SafeLoader with ``!Find`` and ``!Env``; any other tag (``!!python/...``) is an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # PyYAML keeps the last of two equal keys silently; an admin's typo should not vanish.
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == "tag:yaml.org,2002:str":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)

    def construct_undefined(self, node: yaml.Node) -> Any:
        raise yaml.constructor.ConstructorError(
            None, None, f"tag {node.tag} is not allowed (blueprints know !Find and !Env)", node.start_mark)


def _construct_find(loader: _Loader, node: yaml.Node) -> Find:
    value = loader.construct_sequence(node, deep=True) if isinstance(node, yaml.SequenceNode) else None
    if not (value and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], dict)):
        raise yaml.constructor.ConstructorError(
            None, None, "!Find takes [model, {field: value}]", node.start_mark)
    return Find(value[0], value[1])


def _construct_env(loader: _Loader, node: yaml.Node) -> _Env:
    if isinstance(node, yaml.ScalarNode):
        return _Env(str(loader.construct_scalar(node)))
    value = loader.construct_sequence(node, deep=True) if isinstance(node, yaml.SequenceNode) else None
    if not (value and len(value) == 2 and isinstance(value[0], str)):
        raise yaml.constructor.ConstructorError(None, None, "!Env takes NAME or [NAME, default]", node.start_mark)
    return _Env(value[0], value[1], True)


_Loader.add_constructor("!Find", _construct_find)
_Loader.add_constructor("!Env", _construct_env)
_Loader.add_constructor(None, _Loader.construct_undefined)


class _Dumper(yaml.SafeDumper):
    pass


def _represent_find(dumper: _Dumper, find: Find) -> yaml.Node:
    return dumper.represent_sequence("!Find", [find.model, find.query], flow_style=True)


_Dumper.add_representer(Find, _represent_find)


# -- models ----------------------------------------------------------------------------------


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise pydantic_core.PydanticCustomError("int_type", "Input should be a valid integer, not a boolean")
    return value


Int = Annotated[int, pydantic.BeforeValidator(_not_bool)]
Text = Annotated[str, pydantic.StringConstraints(strip_whitespace=True, min_length=1)]
Slug = Annotated[str, pydantic.StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]*$")]
Designation = Literal["authentication", "authorization", "enrollment", "invalidation", "recovery",
                      "stage_configuration", "unenrollment"]


class _Fields(pydantic.BaseModel):
    # Every field is optional here: what an entry leaves out is left as it is (or to the
    # database default when creating); ``_Spec.required`` says what creating needs.
    model_config = pydantic.ConfigDict(extra="forbid")


class _FlowFields(_Fields):
    slug: Slug | None = None
    name: Text | None = None
    title: str | None = None
    designation: Designation | None = None
    policy_engine_mode: Literal["all", "any"] | None = None
    denied_action: Literal["message", "continue"] | None = None


class _StageFields(_Fields):
    name: Text | None = None
    type: Text | None = None
    config: dict[str, Any] | None = None


class _StageBindingFields(_Fields):
    flow: int | None = None
    stage: int | None = None
    order: Int | None = None
    evaluate_on_plan: bool | None = None
    re_evaluate_policies: bool | None = None
    invalid_response_action: Literal["retry", "restart", "restart_with_context"] | None = None


class _PolicyFields(_Fields):
    name: Text | None = None
    type: Text | None = None
    config: dict[str, Any] | None = None


class _ProviderFields(_Fields):
    name: Text | None = None
    type: Text | None = None
    config: dict[str, Any] | None = None


class _ApplicationFields(_Fields):
    slug: Slug | None = None
    name: Text | None = None
    description: str | None = None
    launch_url: str | None = None
    icon: str | None = None
    group: str | None = None
    provider: int | None = None
    policy_engine_mode: Literal["all", "any"] | None = None


class _PolicyBindingFields(_Fields):
    flow: int | None = None
    stage_binding: int | None = None
    application: int | None = None
    policy: int | None = None
    user: int | None = None
    group: int | None = None
    order: Int | None = None
    enabled: bool | None = None
    negate: bool | None = None
    timeout: Annotated[Int, pydantic.Field(gt=0)] | None = None
    failure_result: bool | None = None


class _UserFields(_Fields):
    username: str | None = None
    email: str | None = None
    display_name: str | None = None
    is_active: bool | None = None
    is_superuser: bool | None = None
    attributes: dict[str, Any] | None = None
    password: str | None = None
    password_hash: str | None = None
    groups: list[int] | None = None


class _GroupFields(_Fields):
    name: Text | None = None
    parent: int | None = None
    is_superuser: bool | None = None
    attributes: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class _Spec:
    name: str
    table: str
    fields: type[_Fields]
    identifiers: tuple[str, ...]
    required: tuple[str, ...]  # to create a row
    refs: Mapping[str, str] = dataclasses.field(default_factory=dict)  # field -> model it points at
    natural_key: str | None = None  # what a plain string reference to this model matches
    case_insensitive: frozenset[str] = frozenset()
    nullable: frozenset[str] = frozenset()
    identifier_only: frozenset[str] = frozenset()  # may not be changed through attrs
    virtual: frozenset[str] = frozenset()  # handled in code, not a column
    touch: bool = False  # has updated_at

    def column(self, field: str) -> str:
        return f"{field}_id" if field in self.refs else field

    @property
    def columns(self) -> list[str]:
        return [f for f in self.fields.model_fields if f not in self.virtual]

    @property
    def attr_fields(self) -> list[str]:
        return [f for f in self.fields.model_fields if f not in self.identifier_only]


_TARGETS = ("flow", "stage_binding", "application")
_SUBJECTS = ("policy", "user", "group")

MODELS: dict[str, _Spec] = {spec.name: spec for spec in (
    _Spec("flow", "flows", _FlowFields, ("slug",), ("slug", "name", "designation"), natural_key="slug", touch=True),
    _Spec("stage", "stages", _StageFields, ("name",), ("name", "type"), natural_key="name", touch=True),
    _Spec("flow_stage_binding", "flow_stage_bindings", _StageBindingFields, ("flow", "stage", "order"),
          ("flow", "stage", "order"), refs={"flow": "flow", "stage": "stage"}),
    _Spec("policy", "policies", _PolicyFields, ("name",), ("name", "type"), natural_key="name", touch=True),
    _Spec("policy_binding", "policy_bindings", _PolicyBindingFields, _TARGETS + _SUBJECTS, (),
          refs={"flow": "flow", "stage_binding": "flow_stage_binding", "application": "application",
                "policy": "policy", "user": "user", "group": "group"},
          nullable=frozenset(_TARGETS + _SUBJECTS), identifier_only=frozenset(_TARGETS + _SUBJECTS)),
    _Spec("user", "users", _UserFields, ("username",), ("username",), natural_key="username",
          case_insensitive=frozenset({"username"}), nullable=frozenset({"email", "password_hash"}),
          virtual=frozenset({"password", "groups"})),
    _Spec("group", "groups", _GroupFields, ("name",), ("name",), refs={"parent": "group"}, natural_key="name",
          case_insensitive=frozenset({"name"}), nullable=frozenset({"parent"})),
    _Spec("provider", "providers", _ProviderFields, ("name",), ("name", "type"), natural_key="name", touch=True),
    _Spec("application", "applications", _ApplicationFields, ("slug",), ("slug", "name"), refs={"provider": "provider"},
          natural_key="slug", nullable=frozenset({"launch_url", "icon", "provider"}), touch=True),
)}


# -- loading ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Entry:
    index: int
    model: str
    state: str
    identifiers: dict[str, Any]
    attrs: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Blueprint:
    source: str  # the file as the admin named it, for messages
    name: str
    entries: tuple[Entry, ...]
    checksum: str  # SHA-256 of the text


def load(path_or_text: str | Path, *, source: str | None = None) -> Blueprint:
    """Parse and check the structure of a blueprint: a ``Path``, a string naming a
    ``.yaml``/``.yml`` file, or the YAML text itself. Environment values are read now;
    field types, references and stage configs are checked by ``apply``."""
    is_path = isinstance(path_or_text, Path) or (
        "\n" not in path_or_text and path_or_text.strip().endswith((".yaml", ".yml")))
    if is_path:
        path = Path(path_or_text)
        source = source or str(path)
        try:
            if path.stat().st_size > MAX_SIZE:
                raise BlueprintError(source, f"larger than {MAX_SIZE // (1024 * 1024)} MiB")
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise BlueprintError(source, f"cannot read: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise BlueprintError(source, "not UTF-8 text") from None
    else:
        text = str(path_or_text)
        source = source or "<blueprint>"
        if len(text) > MAX_SIZE:
            raise BlueprintError(source, f"larger than {MAX_SIZE // (1024 * 1024)} MiB")
    try:
        loader = _Loader(text)
        try:
            document = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise BlueprintError(source, f"{where}{exc.problem or exc.context or 'not valid YAML'}") from None
    except yaml.YAMLError as exc:
        raise BlueprintError(source, f"not valid YAML: {exc}") from None
    return _structure(source, document, hashlib.sha256(text.encode()).hexdigest())


def _structure(source: str, document: Any, checksum: str) -> Blueprint:
    def error(problem: str, field: str | None = None) -> BlueprintError:
        return BlueprintError(source, f"{field}: {problem}" if field else problem)

    if not isinstance(document, dict):
        raise error("a blueprint is a mapping with version, metadata and entries")
    unknown = sorted(set(map(str, document)) - {"version", "metadata", "entries"})
    if unknown:
        raise error(f"unknown key {unknown[0]!r} (a blueprint has version, metadata, entries)")
    version = document.get("version")
    if version != VERSION or isinstance(version, bool):
        raise error(f"must be {VERSION}, not {version!r}", "version")
    metadata = document.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str) or not metadata["name"].strip():
        raise error("must be a mapping with a name", "metadata")
    unknown = sorted(set(map(str, metadata)) - {"name", "description"})
    if unknown:
        raise error(f"unknown key {unknown[0]!r} (metadata has name, description)", "metadata")
    raw_entries = document.get("entries", [])
    if not isinstance(raw_entries, list):
        raise error("must be a list", "entries")
    budget = [MAX_VALUES]
    entries = []
    for index, raw in enumerate(raw_entries):
        entries.append(_entry(source, index, raw, budget))
    return Blueprint(source, metadata["name"].strip(), tuple(entries), checksum)


def _entry(source: str, index: int, raw: Any, budget: list[int]) -> Entry:
    model = raw.get("model") if isinstance(raw, dict) else None
    model = model if isinstance(model, str) else None

    def error(field: str | None, problem: str) -> BlueprintError:
        return BlueprintError(source, problem, entry=index, model=model if model in MODELS else None, field=field)

    if not isinstance(raw, dict):
        raise error(None, "an entry is a mapping with model, identifiers, attrs, state")
    unknown = sorted(set(map(str, raw)) - {"model", "identifiers", "attrs", "state"})
    if unknown:
        raise error(unknown[0], "unknown key (an entry has model, identifiers, attrs, state)")
    if model not in MODELS:
        raise error("model", f"unknown model {model!r} (known: {', '.join(MODELS)})")
    spec = MODELS[model]
    state = raw.get("state", "present")
    if state not in STATES:
        raise error("state", f"must be one of {', '.join(STATES)}, not {state!r}")
    identifiers = raw.get("identifiers")
    if not isinstance(identifiers, dict) or not identifiers:
        raise error("identifiers", f"must be a mapping of {', '.join(spec.identifiers)}")
    attrs = raw.get("attrs") or {}
    if not isinstance(attrs, dict):
        raise error("attrs", "must be a mapping")
    for key in identifiers:
        if key not in spec.identifiers:
            raise error(f"identifiers.{key}", f"not an identifier of {model} (identifiers: {', '.join(spec.identifiers)})")
    for key in attrs:
        if key not in spec.attr_fields:
            raise error(str(key), f"unknown attr of {model} (attrs: {', '.join(spec.attr_fields)})")
    try:
        identifiers = _expand(identifiers, "identifiers", budget)
        attrs = _expand(attrs, "", budget)
    except _EntryError as exc:
        raise error(exc.field, exc.problem) from None
    return Entry(index, model, state, identifiers, attrs)


def _expand(value: Any, path: str, budget: list[int]) -> Any:
    """A copy of ``value`` with ``!Env`` replaced by its value; bounded, so aliases can't explode."""
    budget[0] -= 1
    if budget[0] < 0:
        raise _EntryError(path or None, f"more than {MAX_VALUES} values (are aliases expanding?)")
    if isinstance(value, _Env):
        if value.name in os.environ:
            return os.environ[value.name]
        if value.has_default:
            return _expand(value.default, path, budget)
        raise _EntryError(path or None, f"!Env {value.name}: not set, and no default given")
    if isinstance(value, Find):
        return Find(value.model, _expand(value.query, path, budget))
    if isinstance(value, dict):
        return {k: _expand(v, _join(path, k), budget) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, _join(path, i), budget) for i, v in enumerate(value)]
    return value


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


# -- applying --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Change:
    source: str
    index: int
    model: str
    key: str  # the identifiers, readable
    action: Literal["created", "updated", "deleted", "unchanged"]

    def __str__(self) -> str:
        return f"{self.action} {self.model} {self.key} ({self.source}: entries[{self.index}])"


@dataclasses.dataclass
class ApplyReport:
    changes: list[Change] = dataclasses.field(default_factory=list)

    @property
    def changed(self) -> list[Change]:
        return [c for c in self.changes if c.action != "unchanged"]

    def summary(self) -> str:
        counts = {a: sum(c.action == a for c in self.changes) for a in ("created", "updated", "deleted", "unchanged")}
        return ", ".join(f"{n} {a}" for a, n in counts.items())


async def apply(keystage: Keystage, blueprints: list[Blueprint]) -> ApplyReport:
    """Apply ``blueprints`` in order, in one transaction: all of it or (on error) none of it."""
    async with keystage.pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_ID)
        report = await _Applier(keystage, conn).run(blueprints)
        await _record(keystage, conn, blueprints, report)
    return report


async def _record(keystage: Keystage, conn: asyncpg.Connection, blueprints: list[Blueprint],
                  report: ApplyReport, *, defaults: bool = False) -> None:
    """One audit event per apply that changed something, committed with the changes."""
    if not report.changed:
        return
    counts = {a: sum(c.action == a for c in report.changes) for a in ("created", "updated", "deleted")}
    context = {"blueprints": [b.name for b in blueprints], "files": [b.source for b in blueprints],
               "defaults": defaults, **counts}
    await events.record(keystage, events.Event("blueprint_applied", context=context), conn=conn)


class _Applier:
    def __init__(self, keystage: Keystage, conn: asyncpg.Connection) -> None:
        self.keystage = keystage
        self.conn = conn

    async def run(self, blueprints: list[Blueprint]) -> ApplyReport:
        report = ApplyReport()
        for blueprint in blueprints:
            for entry in blueprint.entries:
                try:
                    action = await self.entry(entry)
                except _EntryError as exc:
                    raise BlueprintError(blueprint.source, exc.problem, entry=entry.index, model=entry.model,
                                         field=exc.field) from None
                except asyncpg.PostgresError as exc:
                    raise BlueprintError(blueprint.source, _database_problem(exc), entry=entry.index,
                                         model=entry.model) from None
                report.changes.append(Change(blueprint.source, entry.index, entry.model,
                                             _describe(entry.identifiers), action))
        return report

    # references and !Find

    async def resolve(self, value: Any, path: str) -> Any:
        """``value`` with every ``!Find`` replaced by the id it finds."""
        if isinstance(value, Find):
            return await self.find(value, path)
        if isinstance(value, dict):
            return {k: await self.resolve(v, _join(path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [await self.resolve(v, _join(path, i)) for i, v in enumerate(value)]
        return value

    async def find(self, find: Find, path: str) -> _Id:
        spec = MODELS.get(find.model)
        label = f"!Find [{find.model}, {_describe(find.query)}]"
        if spec is None:
            raise _EntryError(path, f"{label}: unknown model (known: {', '.join(MODELS)})")
        if not find.query:
            raise _EntryError(path, f"{label}: needs at least one field")
        for key in find.query:
            if key not in spec.identifiers:
                raise _EntryError(path, f"{label}: {key} is not an identifier of {spec.name} "
                                        f"(identifiers: {', '.join(spec.identifiers)})")
        query = await self.fields(spec, await self.resolve(find.query, path), path)
        ids = await self.lookup(spec, query, limit=2)
        if not ids:
            raise _NotFound(path, f"{label}: no such {spec.name}")
        if len(ids) > 1:
            raise _EntryError(path, f"{label}: matches more than one {spec.name}")
        return _Id(ids[0], spec.name)

    async def reference(self, model: str, value: Any, path: str) -> int | None:
        if value is None:
            return None
        if isinstance(value, _Id):
            if value.model != model:
                raise _EntryError(path, f"!Find gives a {value.model}, this field takes a {model}")
            return int(value)
        spec = MODELS[model]
        if not isinstance(value, str) or spec.natural_key is None:
            expected = f"a {spec.natural_key} or a !Find" if spec.natural_key else "a !Find"
            raise _EntryError(path, f"Input should be {expected} of a {model}, not {value!r}")
        ids = await self.lookup(spec, {spec.natural_key: value}, limit=1)
        if not ids:
            raise _NotFound(path, f"no {model} with {spec.natural_key} {value!r}")
        return ids[0]

    async def fields(self, spec: _Spec, raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        """Check and convert ``raw`` (``!Find`` already resolved): references become ids."""
        data = dict(raw)
        for name, model in spec.refs.items():
            if name in data:
                data[name] = await self.reference(model, data[name], _join(prefix, name))
        if spec.name == "user" and isinstance(data.get("groups"), list):
            data["groups"] = [await self.reference("group", g, _join(prefix, f"groups.{i}"))
                              for i, g in enumerate(data["groups"])]
        try:
            parsed = spec.fields.model_validate(data)
        except pydantic.ValidationError as exc:
            raise _validation_error(exc, prefix) from None
        values = {name: getattr(parsed, name) for name in parsed.model_fields_set}
        for name, value in values.items():
            if value is None and name not in spec.nullable:
                raise _EntryError(_join(prefix, name), "may not be null")
            if isinstance(value, dict):
                try:  # YAML has dates, binary and NaN; a jsonb column has none of them
                    json.dumps(value, allow_nan=False)
                except (TypeError, ValueError) as exc:
                    raise _EntryError(_join(prefix, name), f"not representable as JSON: {exc}") from None
        return values

    async def lookup(self, spec: _Spec, query: dict[str, Any], *, limit: int) -> list[int]:
        conditions, args = [], []
        for name, value in query.items():
            column = f'"{spec.column(name)}"'
            if value is None:
                conditions.append(f"{column} IS NULL")
                continue
            args.append(value)
            if name in spec.case_insensitive:
                conditions.append(f"lower({column}) = lower(${len(args)})")
            else:
                conditions.append(f"{column} = ${len(args)}")
        rows = await self.conn.fetch(
            f"SELECT id FROM {spec.table} WHERE {' AND '.join(conditions)} ORDER BY id LIMIT {limit}", *args)
        return [r["id"] for r in rows]

    # one entry

    async def entry(self, entry: Entry) -> str:
        spec = MODELS[entry.model]
        absent = entry.state == "absent"
        try:
            identifiers = await self.fields(spec, await self.resolve(entry.identifiers, ""))
        except _NotFound:
            if absent:  # what cannot be found is already absent
                return "unchanged"
            raise
        self.check_identifiers(spec, identifiers)
        ids = await self.lookup(spec, identifiers, limit=2)
        if len(ids) > 1:
            raise _EntryError("identifiers", f"match more than one {spec.name}")
        row_id = ids[0] if ids else None
        if absent:
            if row_id is None:
                return "unchanged"
            await self.conn.execute(f"DELETE FROM {spec.table} WHERE id = $1", row_id)
            return "deleted"
        values = await self.fields(spec, await self.resolve(entry.attrs, ""))
        if row_id is not None and entry.state == "created":
            return "unchanged"
        current = await self.current(spec, row_id) if row_id is not None else {}
        if row_id is None:
            values = {**identifiers, **values}
            missing = [f for f in spec.required if f not in values]
            if missing:
                raise _EntryError(missing[0], f"required to create a {spec.name}")
        values = await self.prepare(spec, values, current, row_id)
        if row_id is None:
            await self.insert(spec, values)
            return "created"
        return "updated" if await self.update(spec, row_id, values, current) else "unchanged"

    @staticmethod
    def check_identifiers(spec: _Spec, identifiers: dict[str, Any]) -> None:
        if spec.name == "policy_binding":
            for group, what in ((_TARGETS, "target"), (_SUBJECTS, "subject")):
                if sum(identifiers.get(f) is not None for f in group) != 1:
                    raise _EntryError("identifiers", f"need exactly one {what}: one of {', '.join(group)}")
            return
        missing = [f for f in spec.identifiers if f not in identifiers]
        if missing:
            raise _EntryError(f"identifiers.{missing[0]}", f"required to identify a {spec.name}")

    async def current(self, spec: _Spec, row_id: int) -> dict[str, Any]:
        columns = ", ".join(f'"{spec.column(f)}" AS "{f}"' for f in spec.columns)
        row = await self.conn.fetchrow(f"SELECT {columns} FROM {spec.table} WHERE id = $1", row_id)
        data = {k: json.loads(v) if k in ("config", "attributes") and isinstance(v, str) else v
                for k, v in dict(row).items()}
        if spec.name == "user":
            data["groups"] = sorted(r["group_id"] for r in await self.conn.fetch(
                "SELECT group_id FROM group_memberships WHERE user_id = $1", row_id))
        return data

    async def prepare(self, spec: _Spec, values: dict[str, Any], current: dict[str, Any],
                      row_id: int | None) -> dict[str, Any]:
        """Model rules beyond field types: configs against their type, users' names and passwords."""
        if spec.name == "stage" and ("type" in values or "config" in values):
            type_name = values.get("type", current.get("type"))
            stage_type = self.keystage.stage_types.get(type_name)
            if stage_type is None:
                known = ", ".join(sorted(self.keystage.stage_types)) or "none registered"
                raise _EntryError("type", f"unknown stage type {type_name!r} (known: {known})")
            values["config"] = _validated_config(stage_type, values.get("config", current.get("config", {})))
        elif spec.name == "provider" and ("type" in values or "config" in values):
            from .applications import provider_types

            types = provider_types(self.keystage)
            type_name = values.get("type", current.get("type"))
            if type_name not in types:
                known = ", ".join(sorted(types)) or "none registered"
                raise _EntryError("type", f"unknown provider type {type_name!r} (known: {known})")
            raw = values.get("config", current.get("config", {}))
            if isinstance(raw, dict):
                try:
                    raw = await types[type_name].resolve_config(raw)
                except ValueError as exc:
                    raise _EntryError("config", str(exc)) from None
            values["config"] = _validated_config(types[type_name], raw)
        elif spec.name == "policy" and ("type" in values or "config" in values):
            types = getattr(self.keystage, "policy_types", None)
            if types is None:
                types = self.keystage.state.get("policy_types")
            type_name = values.get("type", current.get("type"))
            if types is not None:
                if type_name not in types:
                    known = ", ".join(sorted(types)) or "none registered"
                    raise _EntryError("type", f"unknown policy type {type_name!r} (known: {known})")
                if hasattr(types[type_name], "validate_config"):
                    values["config"] = _validated_config(types[type_name], values.get("config", current.get("config", {})))
        elif spec.name == "user":
            try:
                if "username" in values:
                    values["username"] = validate_username(values["username"])
                if "email" in values:
                    values["email"] = validate_email(values["email"])
            except UserError as exc:
                raise _EntryError(exc.field, str(exc).split(": ", 1)[1]) from None
            if "password" in values and "password_hash" in values:
                raise _EntryError("password", "give password or password_hash, not both")
            password = values.pop("password", None)
            if password == "":
                raise _EntryError("password", "may not be empty (leave it out to keep the current one)")
            if password is not None:
                stored = current.get("password_hash")
                if stored and (await self.keystage.passwords.verify(stored, password)).valid:
                    values["password_hash"] = stored
                else:
                    values["password_hash"] = await self.keystage.passwords.hash(password)
        elif spec.name == "group" and row_id is not None and values.get("parent") is not None:
            cycle = await self.conn.fetchval(
                """WITH RECURSIVE up(id, depth) AS (
                       SELECT $1::bigint, 0
                       UNION ALL
                       SELECT g.parent_id, up.depth + 1 FROM groups g JOIN up ON g.id = up.id
                       WHERE g.parent_id IS NOT NULL AND up.depth < 10000
                   ) SELECT bool_or(id = $2) FROM up""",
                values["parent"], row_id)
            if cycle:
                raise _EntryError("parent", "would make the group its own ancestor")
        return values

    async def insert(self, spec: _Spec, values: dict[str, Any]) -> None:
        columns, args, placeholders = [], [], []
        for name in spec.columns:
            if name in values:
                args.append(_db_value(values[name]))
                columns.append(f'"{spec.column(name)}"')
                placeholders.append(f"${len(args)}::jsonb" if name in ("config", "attributes") else f"${len(args)}")
        if spec.name == "user" and values.get("password_hash") is not None:
            columns.append("password_changed_at")
            placeholders.append("now()")
        row_id = await self.conn.fetchval(
            f"INSERT INTO {spec.table} ({', '.join(columns)}) VALUES ({', '.join(placeholders)}) RETURNING id", *args)
        if spec.name == "user" and values.get("groups"):
            await self.set_groups(row_id, values["groups"])

    async def update(self, spec: _Spec, row_id: int, values: dict[str, Any], current: dict[str, Any]) -> bool:
        assignments, args = [], [row_id]
        for name in spec.columns:
            if name in values and values[name] != current.get(name):
                args.append(_db_value(values[name]))
                cast = "::jsonb" if name in ("config", "attributes") else ""
                assignments.append(f'"{spec.column(name)}" = ${len(args)}{cast}')
        if spec.name == "user" and "password_hash" in values and values["password_hash"] != current["password_hash"]:
            assignments.append("password_changed_at = now()")
        groups_changed = spec.name == "user" and "groups" in values and sorted(set(values["groups"])) != current["groups"]
        if assignments:
            if spec.touch:
                assignments.append("updated_at = now()")
            await self.conn.execute(f"UPDATE {spec.table} SET {', '.join(assignments)} WHERE id = $1", *args)
        if groups_changed:
            await self.set_groups(row_id, values["groups"])
        return bool(assignments) or groups_changed

    async def set_groups(self, user_id: int, group_ids: list[int]) -> None:
        await self.conn.execute("DELETE FROM group_memberships WHERE user_id = $1 AND NOT group_id = ANY($2::bigint[])",
                                user_id, group_ids)
        await self.conn.execute(
            "INSERT INTO group_memberships (group_id, user_id) SELECT unnest($2::bigint[]), $1 ON CONFLICT DO NOTHING",
            user_id, group_ids)


def _validated_config(kind: Any, raw: Any) -> dict[str, Any]:
    try:
        config = kind.validate_config(raw)
    except pydantic.ValidationError as exc:
        raise _validation_error(exc, "config") from None
    except Exception as exc:  # a plugin's own validate_config: its bugs are the admin's error message
        raise _EntryError("config", f"cannot be validated by {kind.__name__}: {type(exc).__name__}: {exc}") from None
    if isinstance(config, pydantic.BaseModel):
        # What the admin set, normalised; defaults stay defaults (a later version may change them).
        return config.model_dump(mode="json", exclude_unset=True, by_alias=True)
    return dict(raw)


def _validation_error(exc: pydantic.ValidationError, prefix: str) -> _EntryError:
    """The first problem, with where it is (``config.fields.0.label``) and how many more there are."""
    error = exc.errors()[0]
    message = error["msg"].removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    loc = ".".join(str(p) for p in error["loc"])
    return _EntryError((_join(prefix, loc) if loc else prefix) or None, message + more)


def _db_value(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else value


_CONSTRAINT_FIELD = re.compile(r"^(?:users|groups)_(username|email|name)_key$")


def _database_problem(exc: asyncpg.PostgresError) -> str:
    constraint = getattr(exc, "constraint_name", None) or ""
    if isinstance(exc, asyncpg.UniqueViolationError):
        match = _CONSTRAINT_FIELD.match(constraint)
        field = match.group(1) if match else constraint
        return f"{field}: already taken"
    return f"{constraint + ': ' if constraint else ''}{exc}"


def _describe(identifiers: Mapping[str, Any]) -> str:
    def short(value: Any) -> str:
        if isinstance(value, Find):
            return f"{value.model}({' '.join(short(v) for v in value.query.values())})"
        return str(value)

    return " ".join(f"{k}={short(v)}" for k, v in identifiers.items())


# -- export ----------------------------------------------------------------------------------


async def export(keystage: Keystage, *, include_password_hashes: bool = False) -> str:
    """The configuration as a blueprint v1 (YAML). Password hashes only when asked."""
    async with keystage.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        entries = [
            *await _export_groups(conn),
            *await _export_users(conn, include_password_hashes),
            *await _export_simple(conn, "flow", "SELECT * FROM flows ORDER BY slug"),
            *await _export_simple(conn, "stage", "SELECT * FROM stages ORDER BY name"),
            *await _export_simple(conn, "policy", "SELECT * FROM policies ORDER BY name"),
            *await _export_simple(conn, "provider", "SELECT * FROM providers ORDER BY name"),
            *await _export_applications(conn),
            *await _export_stage_bindings(conn),
            *await _export_policy_bindings(conn),
        ]
    document = {"version": VERSION, "metadata": {"name": "keystage-export"}, "entries": entries}
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False,
                     width=100)


def _entry_dict(model: str, identifiers: dict[str, Any], attrs: dict[str, Any]) -> dict[str, Any]:
    return {"model": model, "identifiers": identifiers, "attrs": attrs}


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


async def _export_simple(conn: asyncpg.Connection, model: str, sql: str) -> list[dict[str, Any]]:
    spec = MODELS[model]
    out = []
    for row in await conn.fetch(sql):
        identifiers = {f: row[f] for f in spec.identifiers}
        attrs = {f: _json(row[f]) if f in ("config", "attributes") else row[f]
                 for f in spec.columns if f not in spec.identifiers}
        out.append(_entry_dict(model, identifiers, attrs))
    return out


def _find_flow(slug: str) -> Find:
    return Find("flow", {"slug": slug})


def _find_stage_binding(slug: str, stage: str, order: int) -> Find:
    return Find("flow_stage_binding", {"flow": _find_flow(slug), "stage": Find("stage", {"name": stage}),
                                       "order": order})


async def _export_groups(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT id, name, parent_id, is_superuser, attributes FROM groups ORDER BY lower(name), id")
    by_id = {r["id"]: r for r in rows}
    ordered: list[asyncpg.Record] = []
    placed: set[int] = set()

    def place(row: asyncpg.Record, depth: int = 0) -> None:  # parents first
        if row["id"] in placed:
            return
        placed.add(row["id"])
        parent = by_id.get(row["parent_id"])
        if parent is not None and depth < len(rows):
            place(parent, depth + 1)
        ordered.append(row)

    for row in rows:
        place(row)
    return [
        _entry_dict("group", {"name": r["name"]}, {
            "parent": Find("group", {"name": by_id[r["parent_id"]]["name"]}) if r["parent_id"] in by_id else None,
            "is_superuser": r["is_superuser"],
            "attributes": _json(r["attributes"]),
        })
        for r in ordered
    ]


async def _export_users(conn: asyncpg.Connection, include_password_hashes: bool) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT u.*, coalesce(array_agg(g.name ORDER BY lower(g.name)) FILTER (WHERE g.id IS NOT NULL), '{}') AS group_names
           FROM users u LEFT JOIN group_memberships m ON m.user_id = u.id LEFT JOIN groups g ON g.id = m.group_id
           GROUP BY u.id ORDER BY lower(u.username)""")
    out = []
    for r in rows:
        attrs: dict[str, Any] = {
            "email": r["email"], "display_name": r["display_name"], "is_active": r["is_active"],
            "is_superuser": r["is_superuser"], "attributes": _json(r["attributes"]), "groups": list(r["group_names"]),
        }
        if include_password_hashes and r["password_hash"] is not None:
            attrs["password_hash"] = r["password_hash"]
        out.append(_entry_dict("user", {"username": r["username"]}, attrs))
    return out


async def _export_stage_bindings(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT f.slug, s.name AS stage, b.* FROM flow_stage_bindings b
           JOIN flows f ON f.id = b.flow_id JOIN stages s ON s.id = b.stage_id
           ORDER BY f.slug, b."order", s.name""")
    return [
        _entry_dict("flow_stage_binding",
                    {"flow": _find_flow(r["slug"]), "stage": Find("stage", {"name": r["stage"]}), "order": r["order"]},
                    {"evaluate_on_plan": r["evaluate_on_plan"], "re_evaluate_policies": r["re_evaluate_policies"],
                     "invalid_response_action": r["invalid_response_action"]})
        for r in rows
    ]


async def _export_applications(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch("""SELECT a.*, p.name AS provider_name FROM applications a
                               LEFT JOIN providers p ON p.id = a.provider_id ORDER BY a.slug""")
    return [
        _entry_dict("application", {"slug": r["slug"]}, {
            "name": r["name"], "description": r["description"], "launch_url": r["launch_url"], "icon": r["icon"],
            "group": r["group"], "policy_engine_mode": r["policy_engine_mode"],
            "provider": Find("provider", {"name": r["provider_name"]}) if r["provider_name"] else None})
        for r in rows
    ]


async def _export_policy_bindings(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT pb.*, coalesce(f.slug, bf.slug) AS flow_slug, s.name AS stage_name, b."order" AS binding_order,
                  p.name AS policy_name, u.username, g.name AS group_name, a.slug AS application_slug
           FROM policy_bindings pb
           LEFT JOIN applications a ON a.id = pb.application_id
           LEFT JOIN flows f ON f.id = pb.flow_id
           LEFT JOIN flow_stage_bindings b ON b.id = pb.stage_binding_id
           LEFT JOIN flows bf ON bf.id = b.flow_id LEFT JOIN stages s ON s.id = b.stage_id
           LEFT JOIN policies p ON p.id = pb.policy_id LEFT JOIN users u ON u.id = pb.user_id
           LEFT JOIN groups g ON g.id = pb.group_id
           ORDER BY application_slug NULLS FIRST, flow_slug, pb.stage_binding_id IS NOT NULL, binding_order, stage_name, pb."order",
                    policy_name, lower(u.username), lower(g.name)""")
    out = []
    for r in rows:
        identifiers: dict[str, Any] = {}
        if r["flow_id"] is not None:
            identifiers["flow"] = _find_flow(r["flow_slug"])
        elif r["application_id"] is not None:
            identifiers["application"] = Find("application", {"slug": r["application_slug"]})
        else:
            identifiers["stage_binding"] = _find_stage_binding(r["flow_slug"], r["stage_name"], r["binding_order"])
        if r["policy_id"] is not None:
            identifiers["policy"] = Find("policy", {"name": r["policy_name"]})
        elif r["user_id"] is not None:
            identifiers["user"] = Find("user", {"username": r["username"]})
        else:
            identifiers["group"] = Find("group", {"name": r["group_name"]})
        out.append(_entry_dict("policy_binding", identifiers, {
            "order": r["order"], "enabled": r["enabled"], "negate": r["negate"], "timeout": r["timeout"],
            "failure_result": r["failure_result"]}))
    return out


# -- defaults --------------------------------------------------------------------------------


async def apply_defaults(keystage: Keystage, *, directory: Path | None = None) -> list[str]:
    """Apply the shipped default blueprints that this database has not had yet; return their names.

    Each is recorded in ``blueprint_instances`` and never applied again, so an admin's
    changes to a default flow survive restarts. Several workers starting at once queue
    on an advisory lock; the first applies, the others find nothing left to do.
    """
    blueprints = [load(path, source=path.name) for path in sorted((directory or DEFAULTS_DIRECTORY).glob("*.yaml"))]
    names = [b.name for b in blueprints]
    if len(set(names)) != len(names):
        raise BlueprintError(str(directory or DEFAULTS_DIRECTORY), "two default blueprints share a metadata name")
    async with keystage.pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_ID)
        done = {r["name"] for r in await conn.fetch("SELECT name FROM blueprint_instances")}
        pending = [b for b in blueprints if b.name not in done]
        if not pending:
            return []
        report = await _Applier(keystage, conn).run(pending)
        await _record(keystage, conn, pending, report, defaults=True)
        await conn.executemany("INSERT INTO blueprint_instances (name, checksum) VALUES ($1, $2)",
                               [(b.name, b.checksum) for b in pending])
    for blueprint in pending:
        log.info("applied default blueprint %s", blueprint.name)
    return [b.name for b in pending]
