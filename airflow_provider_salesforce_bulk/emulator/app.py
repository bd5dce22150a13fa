"""The Starlette application: routes, the API guard (version, session, limits) and error handling.

The one place that decides what stands between a request and its handler, in which order (host
check, body limits, usage header, faults, then version, session and daily limit per API route), so
every route is guarded alike and no handler repeats a check.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import admin, ingest, oauth, query
from .bodies import BodyLimitMiddleware, require_csv
from .faults import ADMIN_PREFIX, FaultMiddleware
from .hosts import HostCheckMiddleware
from .responses import error_response, invalid_session, json_response, not_found
from .runtime import Emulator

logger = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]
_VERSION = re.compile(r"\d{1,3}\.\d")


def _season(version: float) -> str:
    step = int(version) - 64
    return f"{('Summer', 'Winter', 'Spring')[step % 3]} '{25 + (step + 2) // 3}"


def api(handler: Handler) -> Handler:
    """Guard a REST endpoint: API version, session, then the 24-hour request limit."""

    async def guarded(request: Request) -> Response:
        emulator: Emulator = request.app.state.emulator
        settings = emulator.settings
        version_text = str(request.path_params.get("version", ""))
        if not _VERSION.fullmatch(version_text):
            return not_found()
        version = float(version_text)
        if version > settings.max_api_version:
            return not_found()
        if version < settings.min_api_version:
            return error_response(
                410, "GONE", f"API version {version_text} has been retired and is no longer available"
            )
        token = oauth.bearer_token(request)
        if token is None or not emulator.session_valid(token):
            return invalid_session()
        if emulator.limits.api_requests.used() >= settings.daily_api_requests_max:
            return error_response(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        emulator.limits.api_requests.add(1)
        return await handler(request)

    return guarded


async def versions(request: Request) -> Response:
    """``GET /services/data/``: the API versions this org serves (no session needed)."""
    settings = request.app.state.emulator.settings
    found = []
    version = int(settings.min_api_version)
    while version <= settings.max_api_version:
        found.append(
            {"label": _season(version), "url": f"/services/data/v{version}.0", "version": f"{version}.0"}
        )
        version += 1
    return json_response(found)


async def resources(request: Request) -> Response:
    """``GET /services/data/vXX.X/``: the resources of a version."""
    base = f"/services/data/v{request.path_params['version']}"
    return json_response({"jobs": f"{base}/jobs", "limits": f"{base}/limits", "sobjects": f"{base}/sobjects"})


async def limits(request: Request) -> Response:
    """``GET /services/data/vXX.X/limits``: DailyApiRequests, DailyBulkApiBatches and DailyBulkV2QueryJobs
    that count down."""
    emulator: Emulator = request.app.state.emulator
    settings = emulator.settings
    api_max, batch_max = settings.daily_api_requests_max, settings.daily_bulk_batches_max
    api_left = max(0, api_max - emulator.limits.api_requests.used())
    batch_left = max(0, batch_max - emulator.limits.bulk_batches.used())
    query_max = settings.daily_bulk_query_jobs_max
    query_left = max(0, query_max - emulator.limits.query_jobs.used())
    return json_response(
        {
            "DailyApiRequests": {"Max": api_max, "Remaining": api_left},
            "DailyBulkApiBatches": {"Max": batch_max, "Remaining": batch_left},
            "DailyBulkApiRequests": {"Max": batch_max, "Remaining": batch_left},
            "DailyBulkV2QueryFileStorageMB": {"Max": 976562, "Remaining": 976562},
            "DailyBulkV2QueryJobs": {"Max": query_max, "Remaining": query_left},
        }
    )


class LimitInfoMiddleware:
    """Adds ``Sforce-Limit-Info: api-usage=N/M`` to every answer of the Salesforce API."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(ADMIN_PREFIX):
            await self.app(scope, receive, send)
            return
        emulator: Emulator = scope["app"].state.emulator

        async def send_with_usage(message: Message) -> None:
            if message["type"] == "http.response.start":
                used = emulator.limits.api_requests.used()
                usage = f"api-usage={used}/{emulator.settings.daily_api_requests_max}"
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"sforce-limit-info", usage.encode())],
                }
            await send(message)

        await self.app(scope, receive, send_with_usage)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return error_response(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{request.method}' not allowed")
    if exc.status_code == 404:
        return not_found()
    return error_response(exc.status_code, "UNKNOWN_EXCEPTION", str(exc.detail))


async def _unexpected(request: Request, exc: Exception) -> Response:
    logger.error("emulator error on %s %s: %r", request.method, request.url.path, exc)
    return error_response(
        500,
        "UNKNOWN_EXCEPTION",
        "An unexpected error occurred. Please include this ErrorId if you contact support: 0-0 (emulator)",
    )


def create_app(emulator: Emulator) -> Starlette:
    """Build the ASGI application serving ``emulator``."""
    data = "/services/data/v{version}"
    jobs = data + "/jobs/ingest"
    routes = [
        Route("/services/oauth2/token", oauth.token, methods=["POST"]),
        Route("/services/Soap/u/{version}", oauth.soap_login, methods=["POST"]),
        Route("/services/data", versions, methods=["GET"]),
        Route("/services/data/", versions, methods=["GET"]),
        Route(data, api(resources), methods=["GET"]),
        Route(data + "/", api(resources), methods=["GET"]),
        Route(data + "/limits", api(limits), methods=["GET"]),
        Route(data + "/limits/", api(limits), methods=["GET"]),
        Route(jobs, api(ingest.create_job), methods=["POST"]),
        Route(jobs, api(ingest.list_jobs), methods=["GET"]),
        Route(jobs + "/{job_id}", api(ingest.get_job), methods=["GET"]),
        Route(jobs + "/{job_id}", api(ingest.patch_job), methods=["PATCH"]),
        Route(jobs + "/{job_id}", api(ingest.delete_job), methods=["DELETE"]),
        Route(jobs + "/{job_id}/batches", api(require_csv(ingest.upload)), methods=["PUT"]),
        Route(jobs + "/{job_id}/{kind}", api(ingest.job_results), methods=["GET"]),
        *query.routes(data, api),
        Route(ADMIN_PREFIX + "/settings", admin.get_settings, methods=["GET"]),
        Route(ADMIN_PREFIX + "/settings", admin.post_settings, methods=["POST"]),
        Route(ADMIN_PREFIX + "/records/{object}", admin.get_records, methods=["GET"]),
        Route(ADMIN_PREFIX + "/reset", admin.reset, methods=["POST"]),
        Route(ADMIN_PREFIX + "/credentials", admin.credentials, methods=["GET"]),
        Route(ADMIN_PREFIX + "/health", admin.health, methods=["GET"]),
    ]
    # Salesforce serves the job paths with a trailing slash too (its guide and Data Loader use them), where
    # Starlette would answer 307: register each job route once more with the slash.
    routes += [
        Route(route.path + "/", route.endpoint, methods=route.methods)
        for route in list(routes)
        if isinstance(route, Route) and route.path.startswith(data + "/jobs") and not route.path.endswith("/")
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            # Outermost first: refuse foreign hosts before reading anything, then bound the body.
            Middleware(HostCheckMiddleware, configured_host=emulator.settings.host),
            Middleware(BodyLimitMiddleware, settings=emulator.settings),
            Middleware(LimitInfoMiddleware),
            Middleware(FaultMiddleware, faults=emulator.faults),
            Middleware(GZipMiddleware, minimum_size=500),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _unexpected},
    )
    # Starlette would answer 307 to a path it can match once a slash is added or removed; Salesforce
    # answers 404 NOT_FOUND to any path it does not serve, "jobs/query//" included.
    app.router.redirect_slashes = False
    app.state.emulator = emulator
    return app
