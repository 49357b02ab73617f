"""Operational endpoints: liveness, readiness and metrics under ``/-/``."""

from __future__ import annotations

import asyncio

from quart import Blueprint, Response, current_app, jsonify

from .database import describe

health = Blueprint("keystage_health", __name__)


@health.get("/-/health/live/")
async def live() -> Response:
    return jsonify({"status": "ok"})


@health.get("/-/health/ready/")
async def ready() -> tuple[Response, int]:
    keystage = current_app.extensions["keystage"]
    down: dict[str, str] = {}
    try:
        async with asyncio.timeout(2):
            await keystage.pool.fetchval("SELECT 1")
    except Exception as exc:  # any failure means "not ready", whatever its kind
        down["postgresql"] = f"{type(exc).__name__}: {str(exc)[:200]}" if str(exc) else type(exc).__name__
    if keystage.redis is not None:
        try:
            async with asyncio.timeout(2):
                await keystage.redis.ping()
        except Exception as exc:
            down["redis"] = f"{type(exc).__name__}: {str(exc)[:200]}" if str(exc) else type(exc).__name__
    if down:
        return jsonify({"status": "unavailable", "down": down}), 503
    return jsonify({"status": "ok"}), 200


@health.get("/-/metrics")
async def metrics() -> Response:
    body, content_type = current_app.extensions["keystage_metrics"].render()
    return Response(body, content_type=content_type)


__all__ = ["health", "describe"]
