"""Response helpers: Salesforce's JSON bodies, error arrays, content types, errors several routes give."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

JSON_TYPE = "application/json;charset=UTF-8"
CSV_TYPE = "text/csv; charset=UTF-8"


def json_response(body: Any, status: int = 200) -> Response:
    """A JSON answer with Salesforce's content type."""
    return Response(orjson.dumps(body), status_code=status, media_type=JSON_TYPE)


def error_response(status: int, code: str, message: str) -> Response:
    """An error answer: always a JSON array of ``{"errorCode", "message"}``."""
    return json_response([{"errorCode": code, "message": message}], status)


def not_found() -> Response:
    """404 for an unknown job, path or resource."""
    return error_response(404, "NOT_FOUND", "The requested resource does not exist")


def upload_too_large(limit: int) -> Response:
    """Job data over the limit, sent as an upload or inside a multipart create: 400 ClientInputError."""
    return error_response(
        400, "CLIENTINPUTERROR", f"ClientInputError : Exceeded max size limit of {limit} bytes for job data"
    )


def bad_encoding(encoding: str) -> Response:
    """A body that does not inflate as its ``Content-Encoding`` (``gzip`` or ``deflate``) says."""
    return error_response(400, "CLIENTINPUTERROR", f"The request body is not valid {encoding} data")


def invalid_session() -> Response:
    """401 for a missing, unknown or expired token (Salesforce puts message first)."""
    return Response(
        b'[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]',
        status_code=401,
        media_type=JSON_TYPE,
    )
