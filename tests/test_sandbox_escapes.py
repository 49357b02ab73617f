"""Escape attempts against the expression sandbox: every one is refused or contained.

Each case is a function body an admin (or an attacker with an admin's pen) might save.
Most would *return True* if the escape worked, so a case passes only when the sandbox
answers with the expected ``ExpressionError`` kind (``compile`` cases also carry the
line), or with the harmless value stated. Cases run in one pool of two workers; the
second wall (the attribute allow-list in the worker) is also tested directly, as if
the compile step had let something through.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import AsyncIterator
from types import MappingProxyType
from typing import Any

import pytest
import pytest_asyncio

from keystage.engine.sandbox import ExpressionError, Sandbox, check, guards, scope, views

CONTEXT: dict[str, Any] = {
    "user": {"username": "alice", "email": "alice@example.com", "name": "Alice", "is_active": True,
             "is_superuser": False, "attributes": {"department": "it"}, "groups": ["staff"]},
    "ip": "10.1.2.3", "user_agent": "Mozilla/5.0", "headers": {"x-forwarded-proto": "https"},
    "flow": {"slug": "login", "designation": "authentication"}, "context": {"pending_user": 1},
}

C, R = "compile", "runtime"

# (id, source, expected): expected is an error kind, (kind, line) for compile errors, or ("value", v).
CASES: list[tuple[str, str, Any]] = [
    # -- dunder chains ----------------------------------------------------------------
    ("tuple-subclasses", "return len(().__class__.__bases__[0].__subclasses__()) > 0", (C, 1)),
    ("request-class", "return request.__class__ is not None", (C, 1)),
    ("user-dict", "return request.user.__dict__ is not None", (C, 1)),
    ("list-mro", "return [].__class__.__mro__ is not None", (C, 1)),
    ("str-base", "x = 1\nreturn ''.__class__.__base__ is not None", (C, 2)),
    ("helper-globals", "return log.__globals__ is not None", (C, 1)),
    ("helper-closure", "return is_group_member.__closure__ is None", (C, 1)),
    ("bound-method-self", "f = 'a'.upper\nreturn f.__self__ == 'a'", (C, 2)),
    ("bound-method-func", "f = request.user.attributes.get\nreturn f.__func__ is not None", (C, 2)),
    ("helper-module", "return now.__module__ != ''", (C, 1)),
    ("builtins-name", "return __builtins__ is not None", (C, 1)),
    ("dunder-import", "return __import__('os') is not None", (C, 1)),
    ("dunder-name", "return __name__ == 'expression'", (C, 1)),
    ("dunder-loader", "return __loader__ is not None", (C, 1)),
    ("default-arg-globals", "def f(x=log):\n    return x.__globals__\nreturn f() is not None", (C, 2)),
    ("item-class", "return [x for x in request.user.attributes.items()][0][0].__class__ is str", (C, 1)),
    ("exception-context", "try:\n    1/0\nexcept ZeroDivisionError as e:\n    return e.__context__ is None", (C, 4)),
    # -- generator, coroutine and traceback frames ------------------------------------
    ("genexpr-gi-frame", "g = (x for x in [1])\nreturn g.gi_frame.f_globals is not None", (C, 2)),
    ("genexpr-gi-code", "g = (x for x in [1])\nreturn g.gi_code is not None", (C, 2)),
    ("frame-f-back", "g = (x for x in [1])\nf = g\nreturn f.f_back is not None", (C, 3)),
    ("coroutine-cr-frame", "async def f():\n    pass\nreturn f().cr_frame is not None", (C, 1)),
    ("generator-function", "def f():\n    yield 1\nreturn f().gi_frame is not None", (C, 2)),
    ("yield-from", "def f():\n    yield from [1]\nreturn True", (C, 2)),
    ("generator-send", "g = (x for x in [1])\nreturn g.send(None) == 1", R),
    ("generator-throw", "g = (x for x in [1])\nreturn g.throw(Exception) is None", R),
    ("traceback-frame", "try:\n    1/0\nexcept Exception as e:\n    return e.__traceback__.tb_frame is not None",
     (C, 4)),
    ("tb-frame-attr", "try:\n    1/0\nexcept Exception as e:\n    t = e\nreturn t.tb_frame is not None", (C, 5)),
    ("exception-with-traceback",
     "try:\n    1/0\nexcept Exception as e:\n    return e.with_traceback(None) is not None", R),
    ("exception-args", "try:\n    {}[request]\nexcept KeyError as e:\n    return e.args[0] is request", R),
    ("exception-carries-helper", "e = Exception(log)\nreturn e.args[0] is log", R),
    ("lambda-code", "f = lambda: 1\nreturn f.__code__ is not None", (C, 2)),
    ("function-attribute", "def f():\n    return 1\nreturn f.func_globals is not None", R),
    # -- str.format, format_map, Formatter, % and f-strings ----------------------------
    ("format-class", "return '{0.__class__}'.format(request) != ''", (C, 1)),
    ("format-map", "return '{x.__class__}'.format_map({'x': 1}) != ''", (C, 1)),
    ("format-globals", "fmt = '{0.__init__.__globals__}'\nreturn fmt.format(log) != ''", (C, 2)),
    ("string-formatter", "import string\nreturn string.Formatter().format('{0.__class__}', 1) != ''", (C, 1)),
    ("format-builtin", "return format(request, '') != ''", (C, 1)),
    ("str-type-format", "return str.format('{0.__class__}', 1) != ''", (C, 1)),
    ("fstring-format-attr", "return f\"{'{0.__class__}'}\".format(1) != ''", (C, 1)),
    ("percent-dunder", "return '%s' % request.user.__class__ != ''", (C, 1)),
    ("maketrans", "m = str.maketrans('a', 'b')\nreturn m == {}", (C, 1)),
    ("translate", "return 'abc'.translate({97: 'x'}) == 'xbc'", (C, 1)),
    ("fstring-repr-request", "return f'{request!r}' == '<request>' and f'{request.user!r}' == '<user alice>'",
     ("value", True)),
    ("fstring-repr-helper", "return 'at 0x' in f'{log!r}' or 'object at' in f'{request.user!a}'", ("value", True)),
    ("fstring-spec-dunder", "return f'{request:{\"__class__\"}}' != ''", R),
    # -- guard shadowing ---------------------------------------------------------------
    ("param-getattr", "def f(_getattr_=None):\n    return _getattr_\nreturn f() is None", (C, 1)),
    ("posonly-getitem", "def f(a, /, _getitem_=1):\n    return 1\nreturn True", (C, 1)),
    ("kwonly-getitem", "def f(*, _getitem_=1):\n    return 1\nreturn True", (C, 1)),
    ("vararg-apply", "def f(*_apply_):\n    return 1\nreturn True", (C, 1)),
    ("kwarg-inplacevar", "def f(**_inplacevar_):\n    return 1\nreturn True", (C, 1)),
    ("lambda-write", "f = lambda _write_: 1\nreturn True", (C, 1)),
    ("comprehension-getiter", "return [1 for _getiter_ in [1]] == [1]", (C, 1)),
    ("walrus-print", "return any((_print_ := 1) for x in [1])", (C, 1)),
    ("except-as-getattr", "try:\n    pass\nexcept Exception as _getattr_:\n    pass\nreturn True", (C, 3)),
    ("for-target-write", "for _write_ in [1]:\n    pass\nreturn True", (C, 1)),
    ("keyword-underscore", "return dict(_getattr_=1) == {}", (C, 1)),
    ("assign-sb-guard", "_sb_mul_ = lambda a, b: a * b\nreturn True", (C, 1)),
    ("global-statement", "global x\nx = 1\nreturn True", (C, 1)),
    ("nonlocal-statement", "def f():\n    nonlocal y\nreturn True", (C, 2)),
    ("bare-except", "try:\n    x = 1\nexcept:\n    pass\nreturn True", (C, 3)),
    ("except-star", "try:\n    pass\nexcept* ValueError:\n    pass\nreturn True", (C, 1)),
    ("match-statement", "match request:\n    case _:\n        return True", (C, 1)),
    # -- unicode look-alikes (Python applies NFKC to identifiers) ----------------------
    ("fullwidth-open", "return ｏｐｅｎ('/etc/passwd') is not None", (C, 1)),
    ("fullwidth-type", "return ｔｙｐｅ(1) is int", (C, 1)),
    ("fullwidth-eval", "return ｅｖａｌ('1') == 1", (C, 1)),
    ("math-script-exec", "ℯ𝓍ℯ𝒸('x = 1')\nreturn True", (C, 1)),
    ("bold-open", "return 𝐨𝐩𝐞𝐧 is not None", (C, 1)),
    ("fullwidth-underscore-attr", "return (1).＿＿class＿＿ is int", (C, 1)),
    ("fullwidth-underscore-import", "return ＿＿import＿＿('os') is not None", (C, 1)),
    ("vertical-low-line", "return (1).︳︳class︳︳ is int", (C, 1)),
    ("hangul-filler-attr", "return (1).ᅟ__class__ is int", R),
    ("fullwidth-attribute", "return request.ｕｓｅｒ.username == 'alice'", ("value", True)),
    # -- builtins that open the way out -------------------------------------------------
    ("type", "return type(1) is int", (C, 1)),
    ("getattr", "return getattr(request, 'user') is not None", (C, 1)),
    ("vars", "return vars(request) is not None", (C, 1)),
    ("dir", "return len(dir()) > 0", (C, 1)),
    ("globals", "return globals() is not None", (C, 1)),
    ("locals", "return locals() is not None", (C, 1)),
    ("eval", "return eval('1') == 1", (C, 1)),
    ("exec", "exec('x = 1')\nreturn True", (C, 1)),
    ("compile", "return compile('1', 'f', 'eval') is not None", (C, 1)),
    ("breakpoint", "breakpoint()\nreturn True", (C, 1)),
    ("help", "help()\nreturn True", (C, 1)),
    ("input", "return input() == ''", (C, 1)),
    ("memoryview", "return memoryview(b'') is not None", (C, 1)),
    ("object", "return object() is not None", (C, 1)),
    ("super", "return super() is not None", (C, 1)),
    ("open-name", "x = open\nreturn True", (C, 1)),
    ("hasattr", "return hasattr(request, 'user')", (C, 1)),
    ("id", "return id(request) > 0", (C, 1)),
    ("iter-next", "return next(iter([1])) == 1", (C, 1)),
    ("system-exit", "raise SystemExit(1)", (C, 1)),
    ("keyboard-interrupt", "raise KeyboardInterrupt", (C, 1)),
    ("base-exception", "raise BaseException('x')", (C, 1)),
    ("generator-exit", "raise GeneratorExit", (C, 1)),
    ("exit-name", "exit(0)", (C, 1)),
    ("raise-non-exception", "raise 5", R),
    # -- imports and classes -----------------------------------------------------------
    ("import-os", "import os\nreturn True", (C, 1)),
    ("from-import", "from os import system\nreturn True", (C, 1)),
    ("import-as-underscore", "x = 1\nimport os as _os\nreturn True", (C, 2)),
    ("class", "class A:\n    pass\nreturn True", (C, 1)),
    ("class-finalizer", "class A:\n    def __del__(self):\n        log('later')\nx = A()\nreturn True", (C, 1)),
    ("def-dunder-del", "def __del__(self):\n    pass\nreturn True", (C, 1)),
    ("decorator-type", "@type\ndef f():\n    pass\nreturn True", (C, 1)),
    ("decorator-globals", "@(lambda f: f.__globals__)\ndef g():\n    pass\nreturn True", (C, 1)),
    ("annotation", "x: int = 1\nreturn True", (C, 1)),
    # -- host objects' methods and read-only views --------------------------------------
    ("password-hash", "return request.user.password_hash is None", R),
    ("user-id", "return request.user.id > 0", R),
    ("request-runtime", "return request.keystage is None", R),
    ("network-hosts", "return ip_network('10.0.0.0/8').hosts() is not None", R),
    ("datetime-classmethod", "return now().now() is not None", R),
    ("tzinfo-method", "return now().tzinfo.fromutc(now()) is not None", R),
    ("proxy-mapping", "return request.context.mapping is not None", R),
    ("dict-view-mapping", "return {}.keys().mapping is not None", R),
    ("attributes-view-mapping", "return request.user.attributes.keys().mapping is not None", R),
    ("type-object-method", "return str.upper('a') == 'A'", R),
    ("int-from-bytes", "return int.from_bytes(b'a', 'big') > 0", R),
    ("dict-fromkeys", "return dict.fromkeys([1]) == {1: None}", R),
    ("int-to-bytes", "return (1).to_bytes(10**9, 'big') == b''", R),
    ("encode-codec", "return 'x'.encode('rot13') != b''", R),
    ("write-context", "request.context['x'] = 1\nreturn True", R),
    ("write-user", "request.user.username = 'root'\nreturn True", R),
    ("delete-user", "del request.user\nreturn True", R),
    ("write-attributes", "request.user.attributes['admin'] = True\nreturn True", R),
    ("append-groups", "request.user.groups.append('admins')\nreturn True", R),
    ("write-helper", "log.x = 1\nreturn True", R),
    ("ior-headers", "x = request.headers\nx |= {'a': '1'}\nreturn request.headers.get('a') is None and x['a'] == '1'",
     ("value", True)),
    ("user-by-without-directory", "name = 'bo' + 'b'\nreturn user_by(username=name) is None", R),
    # -- results: no object reaches the host --------------------------------------------
    ("return-lambda", "return lambda: True", "result_type"),
    ("return-helper", "return is_group_member", "result_type"),
    ("return-request", "return request", "result_type"),
    ("return-truthy-int", "return 1", "result_type"),
    ("walrus-contained", "if (u := request.user):\n    return u.username == 'alice'\nreturn False", ("value", True)),
    ("decorator-contained", "@log\ndef f():\n    return 1\nreturn True", ("value", True)),
    ("error-message-no-hash",
     "try:\n    request.user.password_hash\nexcept AttributeError as e:\n    return '$argon2' in str(e)",
     ("value", False)),
]


@pytest_asyncio.fixture(scope="module")
async def pool() -> AsyncIterator[Sandbox]:
    sandbox = Sandbox(workers=2)
    await sandbox.start()
    yield sandbox
    await sandbox.close()


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) >= 60
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize(("source", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
async def test_escape_is_refused_or_contained(pool: Sandbox, source: str, expected: Any) -> None:
    if isinstance(expected, tuple) and expected[0] == "value":
        result = await pool.evaluate(source, context=CONTEXT)
        assert result.value is expected[1]
        return
    kind, line = expected if isinstance(expected, tuple) else (expected, None)
    with pytest.raises(ExpressionError) as info:
        await pool.evaluate(source, context=CONTEXT)
    assert info.value.kind == kind, info.value
    if kind == "compile":
        assert info.value.line == line, info.value
        assert info.value.column is not None
        with pytest.raises(ExpressionError):
            check(source)  # refused at save time too, not only when it runs


async def test_state_does_not_leak_between_evaluations(pool: Sandbox) -> None:
    with pytest.raises(ExpressionError):
        await pool.evaluate("n = ip_network('10.0.0.0/8')\nn.prefixlen = 32\nreturn True", context=CONTEXT)
    for _ in range(4):  # every worker, whichever ran the first one
        await pool.evaluate("print('secret')\nlog('secret')\nreturn True", context=CONTEXT)
        assert (await pool.evaluate("return ip_network('10.0.0.0/8').prefixlen == 8", context=CONTEXT)).value
        result = await pool.evaluate("return printed == '' and request.context.get('x') is None", context=CONTEXT)
        assert result.value is True and result.log_lines == ()


async def test_secrets_do_not_reach_the_worker(pool: Sandbox) -> None:
    # The worker runs with a scrubbed environment; an expression cannot read it anyway,
    # but a worker escape would find nothing there either.
    import os

    os.environ["KEYSTAGE_SECRET_KEY_CANARY"] = "do-not-leak"
    try:
        fresh = Sandbox(workers=1)
        try:
            await fresh.start()
            worker = next(iter(fresh._workers))
            environ = open(f"/proc/{worker.proc.pid}/environ", "rb").read()
            assert b"do-not-leak" not in environ and b"KEYSTAGE" not in environ
        finally:
            await fresh.close()
    finally:
        del os.environ["KEYSTAGE_SECRET_KEY_CANARY"]


# -- the second wall: the worker's guards, as if the compile step had let a name through --


@pytest.mark.parametrize(("obj", "name"), [
    ("abc", "format"), ("abc", "format_map"), ("abc", "__class__"), (str, "maketrans"), (1, "__class__"),
    (scope.log, "__globals__"), (scope.log, "__code__"), ("a".upper, "__self__"), ((x for x in []), "gi_frame"),
    (Exception("x"), "__traceback__"), (Exception("x"), "args"), (MappingProxyType({}), "mapping"),
    ({}.keys(), "mapping"), (dt.datetime.now(), "now"), (ipaddress.ip_network("10.0.0.0/8"), "hosts"),
    (views.UserView({"username": "a", "groups": []}), "_folded"), (scope.PluginHelper("h", print), "func"),
    (guards.g_getattr, "__wrapped__"), (type, "mro"), (guards, "LIMITS"),
])
def test_attribute_allow_list(obj: Any, name: str) -> None:
    with pytest.raises(AttributeError):
        guards.g_getattr(obj, name)


def test_write_and_item_guards() -> None:
    with pytest.raises(TypeError):
        guards.g_write(MappingProxyType({}))
    with pytest.raises(TypeError):
        guards.g_write(scope.log)
    with pytest.raises(TypeError):
        guards.g_getitem(views.UserView({"username": "a"}), "username")
    assert guards.g_write([]) == [] and guards.g_getitem({"a": 1}, "a") == 1
    view = views.UserView({"username": "a", "groups": ["g"]})
    with pytest.raises(AttributeError):
        view.username = "b"  # type: ignore[misc]
