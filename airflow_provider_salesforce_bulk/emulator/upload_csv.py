"""Reading an uploaded job CSV back out of the store, row by row, with the stdlib ``csv`` module.

Shared by the worker (which processes the rows) and the result files (which echo them), so both
read the upload the same way; it streams from the stored chunks, never the whole upload at once.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

from .store import Store

#: The job's ``columnDelimiter`` names and their characters.
DELIMITERS = {"BACKQUOTE": "`", "CARET": "^", "COMMA": ",", "PIPE": "|", "SEMICOLON": ";", "TAB": "\t"}
#: The job's ``lineEnding`` names and their characters.
LINE_ENDINGS = {"LF": "\n", "CRLF": "\r\n"}


class UploadFormatError(Exception):
    """The upload cannot be read at all; ``str(error)`` is the job's ``errorMessage``."""


class _ChunkStream(io.RawIOBase):
    """A read-only byte stream over the upload's stored pieces, holding one piece at a time."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._view = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._view:
            piece = next(self._chunks, None)
            if piece is None:
                return 0
            self._view = memoryview(piece)
        n = min(len(buffer), len(self._view))
        buffer[:n] = self._view[:n]
        self._view = self._view[n:]
        return n


def check_line_ending(first_chunk: bytes, line_ending: str) -> None:
    """Fail like Salesforce when the header's line ending does not match the job's setting.

    Raises
    ------
    UploadFormatError
        With ``ClientInputError : LineEnding is invalid on user data...``.
    """
    end = first_chunk.find(b"\n")
    if end < 0:
        return
    crlf = end > 0 and first_chunk[end - 1 : end] == b"\r"
    if crlf != (line_ending == "CRLF"):
        raise UploadFormatError(
            "ClientInputError : LineEnding is invalid on user data. "
            f"Current LineEnding setting is {line_ending}"
        )


def raw_header(store: Store, job_id: str) -> str | None:
    """The upload's header line exactly as uploaded (quotes included), without BOM or line ending."""
    first = next(store.iter_upload(job_id), b"")
    end = first.find(b"\n")
    line = first[: end if end >= 0 else len(first)].removeprefix(b"\xef\xbb\xbf").removesuffix(b"\r")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return None


def read_rows(store: Store, job_id: str, delimiter: str) -> tuple[list[str], Iterator[list[str]]]:
    """Return the upload's header and an iterator over its non-blank data rows.

    Raises
    ------
    UploadFormatError
        If there is no upload or no header; rows raise it later when the CSV is malformed.
    """
    stream = io.BufferedReader(_ChunkStream(store.iter_upload(job_id)), buffer_size=1 << 20)
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    reader = csv.reader(text, delimiter=DELIMITERS[delimiter], strict=True)
    try:
        header = next(reader, None)
    except (csv.Error, UnicodeDecodeError) as exc:
        raise UploadFormatError(f"ClientInputError : Failed to parse CSV header: {exc}") from None
    if not header:
        raise UploadFormatError("ClientInputError : The job has no data: the CSV header is missing")

    def rows() -> Iterator[list[str]]:
        try:
            for row in reader:
                if row:
                    yield row
        except csv.Error as exc:
            raise UploadFormatError(f"ClientInputError : Failed to parse CSV: {exc}") from None
        except UnicodeDecodeError:
            raise UploadFormatError("ClientInputError : The CSV is not valid UTF-8") from None

    return header, rows()
