"""One sandbox worker process, seen from the host: its pipes, read and written without blocking.

Frames are a 4-byte big-endian length and a payload: pickle towards the worker (the host
is trusted), JSON back (the worker is not: a frame above ``frame_cap`` or out of turn
ends the worker). See worker.py for the other side.
"""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .pool import Sandbox

HEADER = struct.Struct(">I")


class WorkerFailure(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class WorkerProcess:
    """One worker process and its two pipes, read and written without blocking the loop."""

    def __init__(self, sandbox: Sandbox, proc: subprocess.Popen[bytes], read_fd: int, write_fd: int) -> None:
        self.sandbox = sandbox
        self.proc = proc
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.buffer = bytearray()
        self.frame_cap = 1 << 20
        self.waiter: asyncio.Future[bytes] | None = None
        self.known: set[str] = set()
        self.alive = True
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(read_fd, self._readable)

    def _readable(self) -> None:
        while True:
            try:
                chunk = os.read(self.read_fd, 1 << 20)
            except BlockingIOError:
                break
            except OSError as exc:
                self._fail(WorkerFailure("resource", f"sandbox worker pipe failed: {exc}"))
                return
            if not chunk:
                self._fail(WorkerFailure("resource", "sandbox worker ended"))
                return
            self.buffer += chunk
        while len(self.buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self.buffer)
            if size > self.frame_cap:
                self._fail(WorkerFailure("resource", f"sandbox worker sent {size} bytes; at most {self.frame_cap}"))
                return
            if len(self.buffer) < HEADER.size + size:
                break
            frame = bytes(self.buffer[HEADER.size:HEADER.size + size])
            del self.buffer[:HEADER.size + size]
            if self.waiter is None or self.waiter.done():
                self._fail(WorkerFailure("resource", "sandbox worker spoke out of turn"))
                return
            self.waiter.set_result(frame)

    def _fail(self, failure: WorkerFailure) -> None:
        self.stop_reading()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(failure)

    def stop_reading(self) -> None:
        if self.alive:
            self.alive = False
            try:
                self.loop.remove_reader(self.read_fd)
            except (RuntimeError, ValueError):  # the loop is closed already
                pass

    async def send(self, payload: bytes) -> None:
        data = memoryview(HEADER.pack(len(payload)) + payload)
        while data:
            try:
                written = os.write(self.write_fd, data)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                raise WorkerFailure("resource", f"sandbox worker pipe failed: {exc}") from None
            data = data[written:]
            if data:
                ready = self.loop.create_future()
                self.loop.add_writer(self.write_fd, ready.set_result, None)
                try:
                    await ready
                finally:
                    self.loop.remove_writer(self.write_fd)

    async def request(self, payload: bytes, timeout: float) -> bytes:
        """Send one frame, wait for the answer until ``timeout``; raise ``WorkerFailure`` otherwise."""
        self.waiter = waiter = self.loop.create_future()
        expire = self.loop.call_later(timeout, self._expire, waiter)
        try:
            await self.send(payload)
            return await waiter
        finally:
            expire.cancel()
            self.waiter = None

    def _expire(self, waiter: asyncio.Future[bytes]) -> None:
        if not waiter.done():
            waiter.set_exception(WorkerFailure("timeout", "deadline"))

    def kill(self) -> None:
        self.stop_reading()
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.read_fd = self.write_fd = -1
        try:
            self.proc.kill()
        except OSError:
            pass

    async def death_reason(self) -> WorkerFailure:
        loop = asyncio.get_running_loop()
        try:
            code = await loop.run_in_executor(None, self.proc.wait, 1.0)
        except subprocess.TimeoutExpired:
            return WorkerFailure("resource", "the sandbox worker stopped answering")
        if code == -signal.SIGALRM:
            return WorkerFailure("timeout", "deadline")
        if code == -signal.SIGXCPU:
            return WorkerFailure("resource", "used up its CPU time")
        if code == -signal.SIGKILL:
            return WorkerFailure("resource", "the sandbox worker was killed (out of memory?)")
        return WorkerFailure("resource", f"the sandbox worker crashed (exit status {code})")


def wait_quietly(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
