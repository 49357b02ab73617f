"""Password hashing through the hashers plugins register; verification off the event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, runtime_checkable


@runtime_checkable
class PasswordHasher(Protocol):
    """What a password hasher plugin provides. Methods are synchronous and CPU-bound:
    the kernel runs them in a thread pool, never on the event loop."""

    name: str

    def hash(self, password: str) -> str: ...

    def identifies(self, encoded: str) -> bool:
        """Whether ``encoded`` is a hash this hasher made (by its prefix)."""
        ...

    def verify(self, encoded: str, password: str) -> bool: ...

    def needs_rehash(self, encoded: str) -> bool: ...


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    valid: bool
    # A new hash to store when the stored one was made with other parameters or hasher.
    new_hash: str | None = None


class Passwords:
    """The hashers in use. The first one hashes; any may verify what it recognises."""

    def __init__(self, hashers: list[PasswordHasher], *, threads: int = 4) -> None:
        if not hashers:
            raise ValueError("no password hasher is registered")
        self.hashers = hashers
        self.primary = hashers[0]
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="keystage-hash")
        # Verifying against this hash when the user is unknown or has no password costs the
        # same time as a real check, so timing does not tell whether an account exists.
        self._dummy = self.primary.hash("keystage-dummy-password")

    async def hash(self, password: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.primary.hash, password)

    async def verify(self, encoded: str | None, password: str) -> VerifyResult:
        """Check ``password`` against ``encoded``; ``None`` (no user, no password) always fails
        after the same amount of work as a real check."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._verify_sync, encoded, password)

    def _verify_sync(self, encoded: str | None, password: str) -> VerifyResult:
        hasher = self._hasher_for(encoded) if encoded else None
        if hasher is None:
            self.primary.verify(self._dummy, password)
            return VerifyResult(False)
        assert encoded is not None
        if not hasher.verify(encoded, password):
            return VerifyResult(False)
        if hasher is not self.primary or hasher.needs_rehash(encoded):
            return VerifyResult(True, self.primary.hash(password))
        return VerifyResult(True)

    def _hasher_for(self, encoded: str) -> PasswordHasher | None:
        for hasher in self.hashers:
            if hasher.identifies(encoded):
                return hasher
        return None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def constant_time_equal(a: str | bytes, b: str | bytes) -> bool:
    """Compare two secrets without leaking where they differ."""
    if isinstance(a, str):
        a = a.encode()
    if isinstance(b, str):
        b = b.encode()
    return hmac.compare_digest(a, b)
