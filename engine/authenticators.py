"""Second-factor device classes: what the ``authenticator_validate`` stage and the settings page
need to know about each kind of authenticator (TOTP app, recovery codes, WebAuthn, third-party).

A stage type that sets up authenticators declares ``device_class = SomeDeviceClass()`` on its
class; ``device_classes(keystage)`` collects them from the registered stage types, so a
third-party authenticator plugin joins in through ``register_stage_types()`` like a bundled one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .runtime import Keystage
    from .stage import StageContext


@dataclasses.dataclass(frozen=True)
class Device:
    kind: str
    id: int
    name: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None = None


class DeviceClass:
    """One kind of authenticator. ``kind`` is its name in ``authenticator_validate``'s config."""

    kind: ClassVar[str]
    # A message id (translated where shown) naming the kind for users, e.g. "Authenticator app".
    label: ClassVar[str]

    async def list(self, keystage: Keystage, user_id: int) -> list[Device]:
        raise NotImplementedError

    async def remove(self, keystage: Keystage, user_id: int, device_id: int) -> bool:
        """Delete one of the user's devices; False when there is no such device of theirs."""
        raise NotImplementedError

    async def challenge(self, ctx: StageContext, user_id: int, config: Any = None) -> dict[str, Any]:
        """Extra challenge fields the validate stage shows for this kind (e.g. WebAuthn options).
        ``config`` is the calling stage's config."""
        return {}

    async def verify(self, ctx: StageContext, user_id: int, response: Mapping[str, Any],
                     config: Any = None) -> bool | None:
        """Check the response against the user's devices: True, False, or None when the response
        holds nothing for this kind (so that another kind may answer it)."""
        raise NotImplementedError


def device_classes(keystage: Keystage) -> dict[str, DeviceClass]:
    """Every device class of the registered stage types, by kind."""
    found: dict[str, DeviceClass] = {}
    for cls in keystage.stage_types.values():
        device_class = getattr(cls, "device_class", None)
        if isinstance(device_class, DeviceClass):
            found.setdefault(device_class.kind, device_class)
    return found


# What AUTHENTICATED_BY holds after a login with a passkey and user verification: possession and
# a PIN or biometric at once, which stands in for both the password and a second factor.
PASSKEY = "passkey"


def may_enrol(ctx: StageContext, user_id: int | None) -> bool:
    """Whether this flow may add an authenticator to ``user_id``: the session's own user, or a user
    an earlier stage of this flow authenticated."""
    from .flow_context import AUTHENTICATED_BY

    if user_id is None:
        return False
    return ctx.session.user_id == user_id or bool(ctx.plan.get(AUTHENTICATED_BY))


def enrolling_user_id(ctx: StageContext) -> int | None:
    """The user a setup stage enrols an authenticator for (the flow's pending user), if allowed."""
    from .flow_context import PENDING_USER

    user_id = ctx.plan.get(PENDING_USER)
    return user_id if may_enrol(ctx, user_id) else None


__all__ = ["PASSKEY", "Device", "DeviceClass", "device_classes", "enrolling_user_id", "may_enrol"]
