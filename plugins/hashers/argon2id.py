"""The default password hasher: Argon2id through argon2-cffi, parameters from settings."""

from __future__ import annotations

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

from keystage.engine.config import Settings
from keystage.engine.hookspecs import hookimpl


class Argon2idHasher:
    name = "argon2id"

    def __init__(self, *, time_cost: int, memory_cost: int, parallelism: int) -> None:
        self._hasher = argon2.PasswordHasher(
            time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism, type=argon2.Type.ID
        )

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def identifies(self, encoded: str) -> bool:
        return encoded.startswith("$argon2")

    def verify(self, encoded: str, password: str) -> bool:
        try:
            return self._hasher.verify(encoded, password)
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, encoded: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(encoded)
        except InvalidHashError:
            return True


# trylast: a plugin that registers its own hasher becomes the primary one.
@hookimpl(trylast=True)
def register_password_hashers(settings: Settings) -> list[Argon2idHasher]:
    return [
        Argon2idHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_cost,
            parallelism=settings.argon2_parallelism,
        )
    ]
