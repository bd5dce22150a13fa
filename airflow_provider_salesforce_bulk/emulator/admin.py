"""The emulator's own controls under ``/__emulator__``: settings, stored records, reset, health.

No authentication, no faults and no API usage: tests and demos use these to arrange and inspect.
"""

from __future__ import annotations

import dataclasses

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from .job_requests import emulator_of
from .responses import json_response


async def get_settings(request: Request) -> Response:
    """``GET /__emulator__/settings``: the live settings."""
    return json_response(emulator_of(request).settings.to_dict())


async def post_settings(request: Request) -> Response:
    """``POST /__emulator__/settings``: change runtime settings from a JSON object; answers them all."""
    emulator = emulator_of(request)
    try:
        changes = orjson.loads(await request.body())
        if not isinstance(changes, dict):
            raise ValueError("expected a JSON object of settings")
        emulator.update_settings(changes)
    except (ValueError, orjson.JSONDecodeError) as exc:
        return json_response({"error": str(exc)}, 400)
    return json_response(emulator.settings.to_dict())


async def get_records(request: Request) -> Response:
    """``GET /__emulator__/records/{object}``: stored records (``?include_deleted=true`` adds deleted)."""
    emulator = emulator_of(request)
    obj = emulator.schema.get(request.path_params["object"])
    if obj is None:
        return json_response({"error": f"unknown object {request.path_params['object']}"}, 404)
    include_deleted = request.query_params.get("include_deleted", "").lower() in ("1", "true", "yes")
    records = await run_in_threadpool(emulator.store.records, obj, include_deleted)
    return json_response(records)


async def reset(request: Request) -> Response:
    """``POST /__emulator__/reset``: forget all jobs and records and refill the limits."""
    await run_in_threadpool(emulator_of(request).reset)
    return Response(status_code=204)


async def credentials(request: Request) -> Response:
    """``GET /__emulator__/credentials``: the fake org's logins, for demos and other processes."""
    emulator = emulator_of(request)
    body = dataclasses.asdict(emulator.credentials)
    body["base_url"] = emulator.base_url
    return json_response(body)


async def health(request: Request) -> Response:
    """``GET /__emulator__/health``."""
    return json_response({"status": "ok"})
