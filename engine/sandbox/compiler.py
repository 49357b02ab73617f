"""Compiling an expression: RestrictedPython plus keystage's own rules, once per source text.

The admin writes the *body* of a function. It is parsed, checked and rewritten by
``compile_restricted_function`` with :class:`ExpressionPolicy`, a stricter
``RestrictingNodeTransformer``:

* refused, with line and column: ``yield``, ``class``, ``import``, ``global``/``nonlocal``,
  ``async``/``await``, ``match``, ``except*``, a bare ``except:``, annotations, any
  identifier or attribute starting with ``_`` (RestrictedPython's rule, extended to keyword
  arguments; a lone ``_`` stays allowed), the builtins that open the way out (``type``,
  ``getattr``, ``open``, ...) and the attributes ``format``/``format_map``/``mro``;
* rewritten so that the worker's guards see them: attribute and item access, iteration,
  writes, ``print`` (RestrictedPython), and ``+``, ``*``, ``**``, ``<<``, ``%`` and every
  f-string field (keystage), whose results are size-checked.

Python applies NFKC to identifiers while parsing, so ``ｏｐｅｎ`` is checked as ``open``.
Results are cached by the SHA-256 of the source (errors too).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import marshal
import re
import threading
from collections import OrderedDict
from types import CodeType

from RestrictedPython import RestrictingNodeTransformer, compile_restricted_function
from RestrictedPython.transformer import copy_locations

from .errors import ExpressionError
from .scope import CORE_HELPERS, SAFE_BUILTINS

MAX_SOURCE = 64 * 1024
MAX_NODES = 20_000
CACHE_SIZE = 4096
FILENAME = "<expression>"

# Builtins that reach types, frames, modules or the file system. Refused as names anywhere,
# so that the error comes at save time, with a line, instead of a NameError at run time.
FORBIDDEN_NAMES = frozenset({
    "type", "getattr", "setattr", "delattr", "hasattr", "vars", "dir", "open", "globals", "locals",
    "compile", "eval", "exec", "breakpoint", "help", "input", "memoryview", "object", "super",
    "classmethod", "staticmethod", "property", "id", "exit", "quit", "copyright", "credits", "license",
    "format", "bytearray", "iter", "next", "issubclass", "hash", "BaseException", "SystemExit",
    "KeyboardInterrupt", "GeneratorExit", "StopIteration", "builtins",
})
FORBIDDEN_ATTRIBUTES = frozenset({"format", "format_map", "mro", "maketrans", "translate"})

GUARDED_OPERATORS = {ast.Add: "_sb_add_", ast.Mult: "_sb_mul_", ast.Pow: "_sb_pow_",
                     ast.LShift: "_sb_lshift_", ast.Mod: "_sb_mod_"}
KNOWN_NAMES = frozenset(SAFE_BUILTINS) | frozenset(CORE_HELPERS) | {"request", "print", "printed"}
IMPURE_NAMES = frozenset({"now", "user_by"})

_ERROR = re.compile(r"\x00(\d+|None)\x00(\d+|None)\x00(.*)", re.S)


class ExpressionPolicy(RestrictingNodeTransformer):
    """RestrictedPython's policy with keystage's extra refusals and size-guarded operators."""

    def error(self, node: ast.AST, info: str) -> None:
        self.errors.append(f"\x00{getattr(node, 'lineno', None)}\x00{getattr(node, 'col_offset', None)}\x00{info}")

    def refuse(self, node: ast.AST, info: str) -> None:
        self.error(node, info)

    def visit_Yield(self, node: ast.Yield) -> ast.AST:
        self.refuse(node, "yield is not allowed: an expression is a plain function body")
        return node

    def visit_YieldFrom(self, node: ast.YieldFrom) -> ast.AST:
        self.refuse(node, "yield is not allowed: an expression is a plain function body")
        return node

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        self.refuse(node, "class definitions are not allowed")
        return node

    def visit_Import(self, node: ast.Import) -> ast.AST:
        self.refuse(node, "import is not allowed: use the helpers the context offers")
        return node

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST:
        self.refuse(node, "import is not allowed: use the helpers the context offers")
        return node

    def visit_Global(self, node: ast.Global) -> ast.AST:
        self.refuse(node, "global is not allowed")
        return node

    def visit_Nonlocal(self, node: ast.Nonlocal) -> ast.AST:
        self.refuse(node, "nonlocal is not allowed")
        return node

    def _no_async(self, node: ast.AST) -> ast.AST:
        self.refuse(node, "async and await are not allowed")
        return node

    visit_AsyncFunctionDef = visit_Await = visit_AsyncFor = visit_AsyncWith = _no_async

    def visit_Match(self, node: ast.AST) -> ast.AST:
        self.refuse(node, "match statements are not allowed")
        return node

    def visit_TryStar(self, node: ast.AST) -> ast.AST:
        self.refuse(node, "except* is not allowed")
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        self.refuse(node, "annotations are not allowed")
        return node

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.AST:
        if node.type is None:
            self.refuse(node, "a bare 'except:' is not allowed: write 'except Exception:'")
        return super().visit_ExceptHandler(node)

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in FORBIDDEN_NAMES:
            self.refuse(node, f"{node.id!r} is not available in expressions")
        return super().visit_Name(node)

    def visit_arg(self, node: ast.arg) -> ast.AST:
        if node.arg in FORBIDDEN_NAMES:
            self.refuse(node, f"{node.arg!r} is not available in expressions")
        elif node.arg.startswith("_") and node.arg != "_":
            self.refuse(node, f'"{node.arg}" is an invalid parameter name because it starts with "_"')
        return super().visit_arg(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        if node.name in FORBIDDEN_NAMES or (node.name.startswith("_") and node.name != "_"):
            self.refuse(node, f"{node.name!r} cannot be used as a function name")
        return super().visit_FunctionDef(node)

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if node.attr in FORBIDDEN_ATTRIBUTES:
            hint = ": use an f-string" if node.attr in ("format", "format_map") else ""
            self.refuse(node, f"the attribute {node.attr!r} is not available in expressions{hint}")
        return super().visit_Attribute(node)

    def visit_keyword(self, node: ast.keyword) -> ast.AST:
        if node.arg is not None and node.arg.startswith("_"):
            self.refuse(node, f'"{node.arg}" is an invalid keyword argument because it starts with "_"')
        return super().visit_keyword(node)

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        node = self.node_contents_visit(node)
        guard = GUARDED_OPERATORS.get(type(node.op))
        if guard is None:
            return node
        call = ast.Call(func=ast.Name(guard, ast.Load()), args=[node.left, node.right], keywords=[])
        copy_locations(call, node)
        return call

    def visit_FormattedValue(self, node: ast.FormattedValue) -> ast.AST:
        node = self.node_contents_visit(node)
        spec: ast.expr = node.format_spec if node.format_spec is not None else ast.Constant("")
        call = ast.Call(func=ast.Name("_sb_format_", ast.Load()),
                        args=[node.value, ast.Constant(node.conversion), spec], keywords=[])
        copy_locations(call, node)
        formatted = ast.FormattedValue(value=call, conversion=-1, format_spec=None)
        copy_locations(formatted, node)
        return formatted


@dataclasses.dataclass(frozen=True)
class Compiled:
    """A compiled expression and what the host learned about it while compiling."""

    key: str  # SHA-256 of the source, hex
    code: CodeType  # module code defining ``expression()``
    marshaled: bytes  # ``code`` as the workers receive it
    names: frozenset[str]  # every name the body reads
    request_attrs: frozenset[str] | None  # ``request.X`` read; None: ``request`` escapes whole
    user_lookups: tuple[tuple[str, str], ...]  # constant ``user_by(field=value)`` calls, prefetched
    uses_groups: bool  # reads ``.groups`` or calls ``is_group_member``
    bound: frozenset[str] = frozenset()  # names the body assigns (variables, parameters, functions)

    @property
    def uses_time(self) -> bool:
        return "now" in self.names

    @property
    def pure(self) -> bool:
        """Whether the answer depends only on the request data it reads (no clock, no other users,
        no plugin helper): such a result may be cached per (policy version, user version, that data)."""
        if self.request_attrs is None or self.names & IMPURE_NAMES:
            return False
        return not (self.names - self.bound - KNOWN_NAMES)


_cache: OrderedDict[str, Compiled | ExpressionError] = OrderedDict()
_lock = threading.Lock()


def source_key(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()


def check(source: str) -> None:
    """Raise ``ExpressionError(kind="compile")`` with line and column if ``source`` cannot run."""
    compile_expression(source)


def compile_expression(source: str) -> Compiled:
    """The compiled form of ``source`` (cached by hash), or ``ExpressionError(kind="compile")``."""
    key = source_key(source)
    with _lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
    if found is None:
        try:
            found = _compile(source, key)
        except ExpressionError as exc:
            found = exc
        with _lock:
            _cache[key] = found
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
    if isinstance(found, ExpressionError):
        raise ExpressionError("compile", found.message, line=found.line, column=found.column)
    return found


def _column(lines: list[str], line: int | None, byte_offset: int | None) -> int | None:
    if line is None or byte_offset is None or not 1 <= line <= len(lines):
        return None
    text = lines[line - 1].encode("utf-8", "surrogatepass")[:byte_offset]
    return len(text.decode("utf-8", "replace")) + 1


def _compile(source: str, key: str) -> Compiled:
    if not isinstance(source, str):
        raise ExpressionError("compile", f"the expression must be text, not {type(source).__name__}")
    if len(source) > MAX_SOURCE:
        raise ExpressionError("compile", f"the expression is longer than {MAX_SOURCE} characters")
    if "\x00" in source:
        raise ExpressionError("compile", "the expression contains a NUL character")
    try:
        tree = ast.parse(source, FILENAME, "exec")
    except SyntaxError as exc:
        raise ExpressionError("compile", f"{exc.msg}", line=exc.lineno, column=exc.offset) from None
    except (RecursionError, MemoryError, ValueError) as exc:
        raise ExpressionError("compile", f"the expression is too complex to parse ({type(exc).__name__})") from None
    if not tree.body:
        raise ExpressionError("compile", "the expression is empty: write a function body that returns a value")
    names, bound, request_attrs, lookups, uses_groups, count = _analyse(tree)
    if count > MAX_NODES:
        raise ExpressionError("compile", f"the expression is too long ({count} syntax nodes; at most {MAX_NODES})")
    try:
        result = compile_restricted_function("", tree, "expression", filename=FILENAME, policy=ExpressionPolicy)
    except (RecursionError, MemoryError) as exc:
        raise ExpressionError("compile", f"the expression is too complex to compile ({type(exc).__name__})") from None
    lines = source.splitlines()
    if result.errors:
        located = []
        for text in result.errors:
            match = _ERROR.fullmatch(text)
            if match is None:
                located.append((0, 0, None, None, text))
                continue
            line = int(match.group(1)) if match.group(1) != "None" else None
            offset = int(match.group(2)) if match.group(2) != "None" else None
            located.append((line or 0, offset or 0, line, _column(lines, line, offset), match.group(3)))
        _, _, line, column, message = min(located, key=lambda item: (item[0], item[1]))
        raise ExpressionError("compile", message, line=line, column=column)
    assert result.code is not None
    return Compiled(key=key, code=result.code, marshaled=marshal.dumps(result.code), names=names,
                    request_attrs=request_attrs, user_lookups=lookups, uses_groups=uses_groups, bound=bound)


def _analyse(tree: ast.Module) -> tuple[frozenset[str], frozenset[str], frozenset[str] | None,
                                        tuple[tuple[str, str], ...], bool, int]:
    names: set[str] = set()
    bound: set[str] = set()
    attrs: set[str] = set()
    request_attrs: set[str] = set()
    under_attribute: set[int] = set()
    request_loads: list[ast.Name] = []
    lookups: list[tuple[str, str]] = []
    count = 0
    for node in ast.walk(tree):
        count += 1
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                names.add(node.id)
                if node.id == "request":
                    request_loads.append(node)
            else:
                bound.add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.Lambda)):
            bound.add(getattr(node, "name", ""))
        elif isinstance(node, ast.Attribute):
            attrs.add(node.attr)
            if isinstance(node.value, ast.Name) and node.value.id == "request":
                request_attrs.add(node.attr)
                under_attribute.add(id(node.value))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "user_by":
            if not node.args and len(node.keywords) == 1:
                keyword = node.keywords[0]
                if keyword.arg in ("username", "email") and isinstance(keyword.value, ast.Constant) \
                        and isinstance(keyword.value.value, str) and len(keyword.value.value) <= 254:
                    lookups.append((keyword.arg, keyword.value.value.lower()))
    escapes = any(id(node) not in under_attribute for node in request_loads)
    uses_groups = "groups" in attrs or "is_group_member" in names
    return (frozenset(names), frozenset(bound), None if escapes else frozenset(request_attrs),
            tuple(dict.fromkeys(lookups)), uses_groups, count)
