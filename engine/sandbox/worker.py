"""A sandbox worker process: runs compiled expressions for the host, one job at a time.

Started by ``pool.py`` as ``python -E -s -P worker.py READ_FD WRITE_FD`` with a scrubbed
environment (no ``KEYSTAGE_*`` secrets), no inherited descriptors but its two pipes, and
stdin/stdout on /dev/null. It imports only the standard library (and the modules of
plugin helpers), then caps itself: address space (``RLIMIT_AS``), CPU time per job
(``RLIMIT_CPU``), no core files, no file writes, a low recursion limit, SIGINT ignored.

Protocol (frames are a 4-byte big-endian length, then the payload):

* host → worker: pickle (the host is trusted). First ``init``, then ``run`` jobs.
* worker → host: JSON only, so that a compromised worker cannot make the host unpickle
  anything. ``{"ready": ...}`` after init, then one ``{"r": [item, ...]}`` per job.

Each job item runs under a hard wall-clock alarm (``ITIMER_REAL`` with SIGALRM left at
its default action: the kernel ends the process, even inside a long C call such as a
catastrophic regular expression). The host also kills the worker at its own deadline.
"""

from __future__ import annotations

import json
import marshal
import math
import os
import pickle
import resource
import signal
import struct
import sys
import time
from types import FunctionType, MappingProxyType
from typing import Any

if __package__:
    from . import guards, scope, views
else:
    # Started as a script: make this directory a package of its own, without running the
    # host-side __init__.py (which would import the whole kernel), and import from it.
    import types as _types

    _package = _types.ModuleType("keystage_sandbox_worker")
    _package.__path__ = [os.path.dirname(os.path.abspath(__file__))]
    sys.modules["keystage_sandbox_worker"] = _package
    from keystage_sandbox_worker import guards, scope, views  # type: ignore[import-not-found,no-redef]

HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024


def read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> bytes | None:
    header = read_exact(fd, HEADER.size)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    if size > MAX_FRAME:
        return None
    return read_exact(fd, size)


def write_frame(fd: int, payload: bytes) -> None:
    data = memoryview(HEADER.pack(len(payload)) + payload)
    while data:
        written = os.write(fd, data)
        data = data[written:]


class Worker:
    def __init__(self, init: dict[str, Any]) -> None:
        guards.LIMITS.update(init.get("limits", {}))
        self.memory = int(init.get("memory", 256 * 1024 * 1024))
        self.grace = float(init.get("grace", 0.1))
        self.helpers = self.load_helpers(init.get("helpers", ()))
        self.base = scope.base_globals(self.helpers)
        self.codes: dict[str, Any] = {}
        self.extra: dict[tuple[tuple[str, Any], ...], dict[str, Any]] = {}

    @staticmethod
    def load_helpers(specs: Any) -> dict[str, Any]:
        import importlib

        helpers: dict[str, Any] = {}
        for name, ref, value in specs:
            if ref is None:
                helpers[name] = views.freeze(value)
                continue
            module_name, _, qualname = ref.partition(":")
            obj: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                obj = getattr(obj, part)
            helpers[name] = scope.PluginHelper(name, obj)
        return helpers

    def limit_self(self) -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_AS, (self.memory, self.memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
        try:
            resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
        except (ValueError, OSError):
            pass
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        sys.set_int_max_str_digits(4300)
        # Deep enough for the worker's own frames plus ~100 levels of expression code.
        depth = 0
        frame = sys._getframe()
        while frame is not None:
            depth += 1
            frame = frame.f_back
        sys.setrecursionlimit(depth + 120)

    def cpu_budget(self, seconds: float) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        used = usage.ru_utime + usage.ru_stime
        soft = int(math.ceil(used + seconds)) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY))

    def function_code(self, key: str) -> Any:
        return self.codes[key]

    def add_code(self, key: str, data: bytes) -> None:
        module_code = marshal.loads(data)
        scope: dict[str, Any] = {"__builtins__": {}}
        exec(module_code, scope)
        self.codes[key] = scope["expression"].__code__

    def helpers_for(self, extra: tuple[tuple[str, Any, Any], ...]) -> dict[str, Any] | None:
        if not extra:
            return None
        key = tuple((name, ref if ref is not None else repr(value)) for name, ref, value in extra)
        found = self.extra.get(key)
        if found is None:
            found = {**self.base, **self.load_helpers(extra)}
            if len(self.extra) > 64:
                self.extra.clear()
            self.extra[key] = found
        return found

    def run(self, job: dict[str, Any]) -> bytes:
        if job.get("reset"):
            self.codes.clear()
        for key, data in job.get("codes", ()):
            self.add_code(key, data)
        base = self.helpers_for(tuple(job.get("helpers", ()))) or self.base
        contexts = job["contexts"]
        views_: list[Any] = [None] * len(contexts)
        timeout = float(job["timeout"])
        alarm = timeout + self.grace if len(job["items"]) == 1 else timeout
        self.cpu_budget(timeout * len(job["items"]))
        results = []
        for key, ctx_index, kind in job["items"]:
            view = views_[ctx_index]
            if view is None:
                try:
                    view = views_[ctx_index] = views.RequestView(contexts[ctx_index])
                except Exception as exc:  # bad data from the host: report, keep going
                    results.append(["e", "runtime", None, f"context: {type(exc).__name__}: {exc}"[:500], [], [], 0.0])
                    continue
            users = contexts[ctx_index].get("users") or {}
            signal.setitimer(signal.ITIMER_REAL, alarm)
            results.append(self.evaluate(self.codes[key], base, view, users, kind))
        signal.setitimer(signal.ITIMER_REAL, 0)
        return json.dumps({"r": results}, separators=(",", ":"), allow_nan=False).encode()

    def evaluate(self, code: Any, base: dict[str, Any], view: Any, users: dict[str, Any], kind: str) -> list[Any]:
        state = guards.State(users)
        guards.CURRENT[:] = [state]
        scope = base.copy()
        scope["request"] = view
        function = FunctionType(code, scope)
        started = time.perf_counter()
        failure: tuple[str, int | None, str] | None = None
        value = None
        try:
            value = function()
        except (guards.NeedUsers, guards.ResourceLimitExceeded):
            pass  # recorded on the state, whatever the expression did afterwards
        except RecursionError:
            failure = ("resource", exception_line(sys.exc_info()[2]),
                       "too deep: recursion is limited to about 100 levels")
        except MemoryError:
            state.log_lines.clear()
            failure = ("resource", exception_line(sys.exc_info()[2]), "out of memory (the sandbox allows 256 MiB)")
        except BaseException as exc:  # noqa: BLE001 - anything the expression raised, SystemExit included
            failure = ("runtime", exception_line(exc.__traceback__), describe(exc))
            del exc
        finally:
            guards.CURRENT[:] = []
        if state.need:
            return ["n", sorted(set(state.need)), state.log_lines, state.messages, time.perf_counter() - started]
        if state.resource is not None:
            failure = ("resource", state.resource_line, state.resource)
        if failure is not None:
            return finish(error_item(*failure, state), started)
        return finish(result_item(value, kind, state), started)


def finish(outcome: list[Any], started: float) -> list[Any]:
    outcome.append(time.perf_counter() - started)
    return outcome


def exception_line(tb: Any) -> int | None:
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<expression>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except BaseException:  # noqa: BLE001 - str() of a hostile value
        text = "<unprintable>"
    name = type(exc).__name__
    return (f"{name}: {text}" if text else name)[:500]


def error_item(kind: str, line: int | None, message: str, state: Any) -> list[Any]:
    return ["e", kind, line, message, state.log_lines, state.messages]


def short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except BaseException:  # noqa: BLE001
        text = "?"
    return text if len(text) <= 80 else text[:77] + "..."


def result_item(value: Any, kind: str, state: Any) -> list[Any]:
    if kind == "policy":
        if type(value) is bool:
            return ["v", value, state.log_lines, state.messages]
        got = "nothing (no return statement)" if value is None else f"{type(value).__name__} {short_repr(value)}"
        return error_item("result_type", None, f"returned {got}; a policy must return True or False", state)
    if kind == "mapping" and type(value) not in (dict, MappingProxyType):
        got = "nothing (no return statement)" if value is None else f"{type(value).__name__} {short_repr(value)}"
        return error_item("result_type", None, f"returned {got}; a mapping must return a dict", state)
    try:
        data = to_json(value, 0, "")
        size = len(json.dumps(data, ensure_ascii=False, allow_nan=False))
    except (TypeError, ValueError) as exc:
        what = "a dict" if kind == "mapping" else "a value"
        return error_item("result_type", None, f"returned {what} that is not JSON data: {exc}", state)
    cap = guards.LIMITS["max_output"]
    if size > cap:
        return error_item("result_type", None, f"returned {size} bytes of JSON; at most {cap} are allowed", state)
    return ["v", data, state.log_lines, state.messages]


def to_json(value: Any, depth: int, path: str) -> Any:
    kind = type(value)
    if depth > 20:
        raise ValueError(f"nested more than 20 levels at {path or 'the top'}")
    if value is None or kind in (str, bool, int):
        return value
    if kind is float:
        if not math.isfinite(value):
            raise ValueError(f"{value} at {path or 'the top'} is not a JSON number")
        return value
    if kind in (dict, MappingProxyType):
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"key {short_repr(key)} at {path or 'the top'} is not a string")
            out[key] = to_json(item, depth + 1, f"{path}.{key}" if path else key)
        return out
    if kind in (list, tuple, views.FrozenList):
        return [to_json(item, depth + 1, f"{path}[{i}]") for i, item in enumerate(value)]
    raise TypeError(f"{kind.__name__} at {path or 'the top'} is not JSON data")


def main(argv: list[str]) -> int:
    read_fd, write_fd = int(argv[1]), int(argv[2])
    payload = read_frame(read_fd)
    if payload is None:
        return 0
    init = pickle.loads(payload)
    sys.path[:] = list(init.get("sys_path", sys.path))
    try:
        worker = Worker(init)
    except Exception as exc:  # a plugin helper that cannot be imported here
        write_frame(write_fd, json.dumps({"ready": False, "error": describe(exc)}).encode())
        return 1
    worker.limit_self()
    write_frame(write_fd, json.dumps({"ready": True, "pid": os.getpid()}).encode())
    while True:
        payload = read_frame(read_fd)
        if payload is None:
            return 0
        try:
            answer = worker.run(pickle.loads(payload))
        except MemoryError:
            # Out of memory outside an expression (building results): say so, then make room by leaving.
            write_frame(write_fd, b'{"fatal":"out of memory (the sandbox allows 256 MiB)"}')
            return 1
        except Exception as exc:  # a bug here, not in the expression: report it and start afresh
            write_frame(write_fd, json.dumps({"fatal": f"sandbox worker error: {describe(exc)}"}).encode())
            return 1
        write_frame(write_fd, answer)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
