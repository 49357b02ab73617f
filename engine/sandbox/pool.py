"""The host side: a pool of pre-started worker processes that run expressions off the event loop.

One ``Sandbox`` per process (``keystage.state["sandbox"]``, see ``get_sandbox``). Each
evaluation borrows an idle worker, sends it the compiled code (once per worker) and a
context of plain data, and waits at most ``timeout``; at the deadline the worker is
killed (SIGKILL) and a fresh one is started in the background, so a runaway loop or a
long C call costs that one evaluation only. Workers also arm their own alarm, so they
stop even if the host's event loop is stuck.

Batches (``evaluate_many``) are split across the workers, one round trip each; every
item still runs under its own alarm in the worker. If a worker dies in the middle of a
batch, the items of its share are run again one by one, so that only the culprit fails.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import math
import os
import pickle
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from . import guards
from .compiler import Compiled, compile_expression
from .errors import ExpressionError
from .helpers import HelperSpec, helper_specs
from .process import WorkerFailure, WorkerProcess, wait_quietly

log = logging.getLogger("keystage.sandbox")

Kind = Literal["policy", "mapping", "value"]
UserLoader = Callable[[list[tuple[str, str]]], Awaitable[Mapping[str, Any]]]

DEFAULT_TIMEOUT = 1.0
MAX_TIMEOUT = 10.0
MEMORY_LIMIT = 256 * 1024 * 1024
WORKER_CODE_CACHE = 4096
MAX_LOOKUP_ROUNDS = 8  # each user_by() with a computed argument may cost one more run
START_TIMEOUT = 30.0
SLACK = 0.02  # for the pipe and the unpickling; the worker's own alarm rings 0.1 s after the timeout
WORKER_SCRIPT = Path(__file__).with_name("worker.py")
ERROR_KINDS = frozenset({"runtime", "timeout", "resource", "result_type"})


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    """What an expression returned, what it logged and said, and how long it ran (seconds)."""

    value: Any
    messages: tuple[str, ...] = ()
    log_lines: tuple[str, ...] = ()
    duration: float = 0.0


class Sandbox:
    """A pool of sandbox worker processes. Create one per process; ``close()`` it at the end."""

    def __init__(self, *, workers: int | None = None, helpers: Sequence[HelperSpec] = (),
                 memory_limit: int = MEMORY_LIMIT, max_timeout: float = MAX_TIMEOUT,
                 limits: Mapping[str, int] | None = None) -> None:
        self.size = workers or max(2, min(os.cpu_count() or 2, 8))
        self.helpers = tuple(helpers)
        self.helper_names = frozenset(h.name for h in self.helpers)
        self.memory_limit = memory_limit
        self.max_timeout = max_timeout
        self.limits = {**guards.LIMITS, **(limits or {})}
        self.closed = False
        self.stats: collections.Counter[str] = collections.Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: set[WorkerProcess] = set()
        self._idle: list[WorkerProcess] = []
        self._waiters: collections.deque[asyncio.Future[WorkerProcess]] = collections.deque()
        self._spawning = 0
        self._start_error: str | None = None
        self._retry_at = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- workers -----------------------------------------------------------------------

    def _init_frame(self) -> bytes:
        return pickle.dumps({
            "sys_path": list(sys.path), "limits": self.limits, "memory": self.memory_limit,
            "helpers": [(h.name, h.ref, h.value) for h in self.helpers],
        })

    async def _spawn(self) -> WorkerProcess:
        loop = asyncio.get_running_loop()
        child_read, host_write = os.pipe()
        host_read, child_write = os.pipe()
        env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        command = [sys.executable, "-E", "-s", "-P", "-B", str(WORKER_SCRIPT), str(child_read), str(child_write)]
        try:
            proc = await loop.run_in_executor(None, lambda: subprocess.Popen(
                command, pass_fds=(child_read, child_write), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, env=env, close_fds=True,
            ))
        except BaseException:
            for fd in (host_read, host_write):
                os.close(fd)
            raise
        finally:
            os.close(child_read)
            os.close(child_write)
        os.set_blocking(host_read, False)
        os.set_blocking(host_write, False)
        worker = WorkerProcess(self, proc, host_read, host_write)
        try:
            answer = json.loads(await worker.request(self._init_frame(), START_TIMEOUT))
        except (WorkerFailure, ValueError) as exc:
            worker.kill()
            self._reap(worker)
            raise WorkerFailure("runtime", f"a sandbox worker could not start: {exc}") from None
        if not isinstance(answer, dict) or answer.get("ready") is not True:
            worker.kill()
            self._reap(worker)
            error = answer.get("error") if isinstance(answer, dict) else None
            raise WorkerFailure("runtime", f"a sandbox worker could not start: {error}")
        worker.frame_cap = 8 << 20
        self.stats["spawned"] += 1
        return worker

    def _reap(self, worker: WorkerProcess) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(loop.run_in_executor(None, wait_quietly, worker.proc))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        """Start the workers now (otherwise the first evaluation does)."""
        await self._ensure_started()

    async def _ensure_started(self) -> None:
        if self.closed:
            raise ExpressionError("runtime", "the sandbox is closed")
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:
                self._kill_all()  # a new event loop (a new asyncio.run): the old pipes belong to the old one
            self._loop = loop
        missing = self.size - len(self._workers) - self._spawning
        if missing <= 0:
            return
        if self._workers:
            # Some workers serve already: top the pool up in the background, and after a
            # failed start not more often than once a second.
            if loop.time() >= self._retry_at:
                for _ in range(missing):
                    self._replace_later()
            return
        results = await asyncio.gather(*(self._add_worker() for _ in range(missing)), return_exceptions=True)
        if not self._workers:
            self._retry_at = loop.time() + 1.0
            failure = next((r for r in results if isinstance(r, BaseException)), None)
            raise ExpressionError("runtime", str(failure) if failure else "no sandbox worker could start")

    async def _add_worker(self) -> None:
        self._spawning += 1
        try:
            worker = await self._spawn()
        except WorkerFailure as exc:
            self._start_error = exc.message
            self._retry_at = asyncio.get_running_loop().time() + 1.0
            log.error("%s", exc.message)
            raise
        finally:
            self._spawning -= 1
        if self.closed or asyncio.get_running_loop() is not self._loop:
            worker.kill()
            return
        self._start_error = None
        self._workers.add(worker)
        self._release(worker)

    def _replace_later(self) -> None:
        if self.closed:
            return
        task = asyncio.ensure_future(self._add_worker())
        self._tasks.add(task)
        task.add_done_callback(self._replaced)

    def _replaced(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not self._workers and not self._spawning:
            while self._waiters:  # nobody left to serve them
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(ExpressionError("runtime", self._start_error or "no sandbox worker"))

    async def _acquire(self) -> WorkerProcess:
        await self._ensure_started()
        while True:
            while self._idle:
                worker = self._idle.pop()
                if worker.alive:
                    return worker
            if not self._workers and not self._spawning:
                await self._ensure_started()
                continue
            waiter: asyncio.Future[WorkerProcess] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                worker = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._release(waiter.result())
                raise
            if worker.alive:
                return worker

    def _release(self, worker: WorkerProcess) -> None:
        if not worker.alive:
            self._discard(worker)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(worker)
                return
        self._idle.append(worker)

    def _discard(self, worker: WorkerProcess) -> None:
        worker.kill()
        if worker in self._workers:
            self._workers.discard(worker)
            self._reap(worker)
            self._replace_later()

    def _kill_all(self) -> None:
        for worker in list(self._workers):
            worker.kill()
            wait_quietly(worker.proc)
        self._workers.clear()
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()
        self._waiters.clear()

    async def close(self) -> None:
        """Stop every worker. Idempotent."""
        if self.closed:
            return
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ExpressionError("runtime", "the sandbox is closed"))
        self._waiters.clear()
        workers = list(self._workers)
        self._workers.clear()
        self._idle.clear()
        for worker in workers:
            worker.kill()
        if workers:
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(None, wait_quietly, w.proc) for w in workers))

    # -- jobs --------------------------------------------------------------------------

    def _job(self, worker: WorkerProcess, compiled: list[Compiled], contexts: list[dict[str, Any]],
             items: list[tuple[str, int, str]], timeout: float, extra: tuple[HelperSpec, ...]) -> bytes:
        codes = {c.key: c.marshaled for c in compiled if c.key not in worker.known}
        reset = len(worker.known) + len(codes) > WORKER_CODE_CACHE
        if reset:
            worker.known.clear()
            codes = {c.key: c.marshaled for c in compiled}
        worker.known.update(codes)
        return pickle.dumps({
            "reset": reset, "codes": list(codes.items()), "contexts": contexts, "items": items,
            "timeout": timeout, "helpers": [(h.name, h.ref, h.value) for h in extra],
        }, protocol=pickle.HIGHEST_PROTOCOL)

    async def _run(self, pairs: Sequence[tuple[Compiled, dict[str, Any]]], timeout: float, kind: str,
                   extra: tuple[HelperSpec, ...]) -> list[list[Any]]:
        """Run ``pairs`` in one worker, in one round trip; raw result items, or ``WorkerFailure``."""
        contexts: list[dict[str, Any]] = []
        positions: dict[int, int] = {}
        items = []
        for compiled, context in pairs:
            index = positions.get(id(context))
            if index is None:
                index = positions[id(context)] = len(contexts)
                contexts.append(context)
            items.append((compiled.key, index, kind))
        worker = await self._acquire()
        single = len(items) == 1
        deadline = timeout + SLACK if single else timeout * len(items) + 1.0
        try:
            payload = self._job(worker, [c for c, _ in pairs], contexts, items, timeout, extra)
            worker.frame_cap = (8 << 20) + len(items) * (self.limits["max_output"] * 2 + 4096)
            frame = await worker.request(payload, deadline)
        except WorkerFailure as failure:
            self.stats["killed"] += 1
            if failure.kind == "timeout" and failure.message == "deadline":
                worker.kill()
            else:
                worker.stop_reading()
                failure = await worker.death_reason()
                worker.kill()
            self._discard(worker)
            raise failure from None
        except BaseException:
            self.stats["killed"] += 1
            self._discard(worker)  # cancelled mid-job: the worker is in an unknown state
            raise
        answer: Any = None
        try:
            answer = json.loads(frame)
            results = answer["r"]
            if not isinstance(results, list) or len(results) != len(items):
                raise ValueError("wrong number of results")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            fatal = answer.get("fatal") if isinstance(answer, dict) else None
            self._discard(worker)
            if isinstance(fatal, str):
                raise WorkerFailure("resource" if "out of memory" in fatal else "runtime", fatal[:200]) from None
            raise WorkerFailure("runtime", f"the sandbox worker sent an invalid answer ({exc})") from None
        self._release(worker)
        return results

    async def _run_one(self, compiled: Compiled, context: dict[str, Any], timeout: float, kind: str,
                       extra: tuple[HelperSpec, ...]) -> list[Any]:
        try:
            return (await self._run([(compiled, context)], timeout, kind, extra))[0]
        except WorkerFailure as failure:
            message = f"took longer than {timeout:g} s" if failure.kind == "timeout" else failure.message
            return ["e", failure.kind, None, message, [], [], timeout if failure.kind == "timeout" else 0.0]

    async def _run_share(self, pairs: list[tuple[Compiled, dict[str, Any]]], timeout: float, kind: str,
                         extra: tuple[HelperSpec, ...]) -> list[list[Any]]:
        try:
            return await self._run(pairs, timeout, kind, extra)
        except WorkerFailure:
            if len(pairs) == 1:
                return [await self._run_one(pairs[0][0], pairs[0][1], timeout, kind, extra)]
            # One item took the worker down: run the share again one by one, so only it fails.
            self.stats["batch_fallbacks"] += 1
            return [await self._run_one(c, ctx, timeout, kind, extra) for c, ctx in pairs]

    # -- the API -----------------------------------------------------------------------

    def _check(self, timeout: float, kind: str) -> None:
        if not 0 < timeout <= self.max_timeout:
            raise ValueError(f"timeout must be above 0 and at most {self.max_timeout:g} s, not {timeout!r}")
        if kind not in ("policy", "mapping", "value"):
            raise ValueError(f"kind must be 'policy', 'mapping' or 'value', not {kind!r}")

    async def evaluate(self, source: str, *, context: Mapping[str, Any], timeout: float = DEFAULT_TIMEOUT,
                       kind: Kind = "policy", helpers: Mapping[str, Any] | None = None,
                       user_loader: UserLoader | None = None) -> EvaluationResult:
        """Run one expression; see ``keystage.engine.sandbox.evaluate``."""
        self._check(timeout, kind)
        compiled = compile_expression(source)
        extra = tuple(helper_specs(helpers)) if helpers else ()
        context = await _with_users(dict(context), compiled.user_lookups, user_loader)
        for _ in range(MAX_LOOKUP_ROUNDS):
            item = await self._run_one(compiled, context, timeout, kind, extra)
            if item[0] != "n":
                return _outcome(item, kind, self.limits)
            context = await _with_users(context, _needs(item), user_loader, required=True)
        raise ExpressionError("resource", f"user_by() asked for new users more than {MAX_LOOKUP_ROUNDS} times")

    async def evaluate_many(self, items: Sequence[tuple[str, Mapping[str, Any]]], *,
                            timeout: float = DEFAULT_TIMEOUT, kind: Kind = "policy",
                            helpers: Mapping[str, Any] | None = None,
                            user_loader: UserLoader | None = None) -> list[EvaluationResult | ExpressionError]:
        """Run many (source, context) pairs, spread over the workers, one round trip each.

        Returns one ``EvaluationResult`` or ``ExpressionError`` per item, in order; a
        failing item never fails the others.
        """
        self._check(timeout, kind)
        extra = tuple(helper_specs(helpers)) if helpers else ()
        out: list[EvaluationResult | ExpressionError | None] = [None] * len(items)
        todo: list[tuple[int, Compiled, dict[str, Any]]] = []
        shared: dict[int, dict[str, Any]] = {}
        lookups: dict[tuple[str, str], None] = {}
        for index, (source, context) in enumerate(items):
            try:
                compiled = compile_expression(source)
            except ExpressionError as exc:
                out[index] = exc
                continue
            copy = shared.get(id(context))
            if copy is None:
                copy = shared[id(context)] = dict(context)
            lookups.update(dict.fromkeys(compiled.user_lookups))
            todo.append((index, compiled, copy))
        if lookups and user_loader is not None:
            fetched = await user_loader(list(lookups))
            for copy in shared.values():
                copy["users"] = {**fetched, **(copy.get("users") or {})}
        for _ in range(MAX_LOOKUP_ROUNDS):
            if not todo:
                break
            raw = await self._spread(todo, timeout, kind, extra)
            again = []
            for (index, compiled, context), item in zip(todo, raw, strict=True):
                if item[0] != "n":
                    try:
                        out[index] = _outcome(item, kind, self.limits)
                    except ExpressionError as exc:
                        out[index] = exc
                    continue
                try:
                    context = await _with_users(context, _needs(item), user_loader, required=True)
                except ExpressionError as exc:
                    out[index] = exc
                    continue
                again.append((index, compiled, context))
            todo = again
        for index, _, _ in todo:
            out[index] = ExpressionError("resource",
                                         f"user_by() asked for new users more than {MAX_LOOKUP_ROUNDS} times")
        return out  # type: ignore[return-value]

    async def _spread(self, todo: list[tuple[int, Compiled, dict[str, Any]]], timeout: float, kind: str,
                      extra: tuple[HelperSpec, ...]) -> list[list[Any]]:
        await self._ensure_started()
        shares = max(1, min(self.size, math.ceil(len(todo) / 16)))
        step = math.ceil(len(todo) / shares)
        chunks = [[(c, ctx) for _, c, ctx in todo[i:i + step]] for i in range(0, len(todo), step)]
        answers = await asyncio.gather(*(self._run_share(chunk, timeout, kind, extra) for chunk in chunks))
        return [item for answer in answers for item in answer]


def _needs(item: list[Any]) -> list[tuple[str, str]]:
    needs = item[1] if isinstance(item[1], list) else []
    return [(str(f), str(v)) for f, v in needs[:guards.LIMITS["max_user_lookups"]] if f in ("username", "email")]


async def _with_users(context: dict[str, Any], wanted: Sequence[tuple[str, str]], loader: UserLoader | None,
                      *, required: bool = False) -> dict[str, Any]:
    known = context.get("users") or {}
    missing = [(f, v) for f, v in wanted if f"{f}:{v}" not in known]
    if not missing:
        return context
    if loader is None:
        if required:
            raise ExpressionError("runtime", "user_by() is not available here: no user directory was given")
        return context
    fetched = await loader(missing)
    users = {**known, **{f"{f}:{v}": fetched.get(f"{f}:{v}") for f, v in missing}}
    return {**context, "users": users}


def _text(value: Any, cap: int) -> str:
    if not isinstance(value, str):
        raise ValueError("not text")
    value = value[:cap]
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def _texts(value: Any, count: int, cap: int) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError("not a list")
    return tuple(_text(v, cap + 1) for v in value[:count + 1])


def _plain(value: Any, depth: int = 0) -> Any:
    """The worker's mapping result, checked again on this side (it is untrusted data)."""
    if depth > 21:
        raise ValueError("nested too deeply")
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return _text(value, 1 << 20)
    if isinstance(value, list):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {_text(k, 1 << 20): _plain(v, depth + 1) for k, v in value.items()}
    raise ValueError("not JSON data")


def _outcome(item: list[Any], kind: str, limits: Mapping[str, int]) -> EvaluationResult:
    """Turn a worker's raw item into a result, or raise its ``ExpressionError``."""
    try:
        tag = item[0]
        duration = float(item[-1]) if isinstance(item[-1], (int, float)) and math.isfinite(item[-1]) else 0.0
        if tag == "v":
            value = item[1]
            if kind == "policy" and not isinstance(value, bool):
                raise ValueError("a policy result that is not a bool")
            if kind in ("mapping", "value"):
                if kind == "mapping" and not isinstance(value, dict):
                    raise ValueError("a mapping result that is not a dict")
                value = _plain(value)
                if len(json.dumps(value)) > limits["max_output"] * 2:
                    raise ValueError("a mapping result that is too big")
            return EvaluationResult(value, _texts(item[3], limits["max_messages"], limits["max_line"]),
                                    _texts(item[2], limits["max_log_lines"], limits["max_line"]), duration)
        if tag == "e":
            error_kind = item[1] if item[1] in ERROR_KINDS else "runtime"
            line = item[2] if isinstance(item[2], int) and not isinstance(item[2], bool) else None
            raise ExpressionError(error_kind, _text(item[3], 500), line=line,
                                  log_lines=_texts(item[4], limits["max_log_lines"], limits["max_line"]),
                                  messages=_texts(item[5], limits["max_messages"], limits["max_line"]))
        raise ValueError(f"unknown answer {tag!r}")
    except (ValueError, IndexError, TypeError, RecursionError) as exc:
        raise ExpressionError("runtime", f"the sandbox worker sent an invalid answer ({exc})") from None
