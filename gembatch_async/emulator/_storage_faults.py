"""Fault injection and request counting for the Cloud Storage emulator.

The same ``ENDPOINT:PROBABILITY:KIND`` rules as the Gemini emulator, applied to Cloud
Storage's JSON API: ``upload`` (the ``/upload/`` routes: simple, multipart and each
resumable request), ``download`` (object media), ``delete``, ``list`` (objects or
buckets), ``get`` (metadata) and ``create`` (bucket insert, copy, compose). ``lost`` hits
the request that completes an upload (a simple or multipart upload, or the resumable
chunk that reaches the declared size): the object is stored and only the answer is lost,
answered as 503 or a dropped connection.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import re
import socket
import struct
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from gembatch_async.emulator._errors import fault_message, status_name
from gembatch_async.emulator._faults import FaultInjector, FaultRule, RequestLog

_LIST = re.compile(r"(?:/storage/v1)?/b(?:/[^/]+/o)?")
_FINAL_RANGE = re.compile(r"bytes (?:\d+-(\d+)|\*)/(\d+)")


def endpoint_of(method: str, url: str) -> str:
    """The fault/log endpoint name of a Cloud Storage JSON API request."""
    parsed = urllib.parse.urlsplit(url)
    path = parsed.path
    query = urllib.parse.parse_qs(parsed.query)
    if path.startswith("/upload/"):
        return "upload"
    if method == "DELETE":
        return "delete"
    if method == "GET":
        if path.startswith("/download/") or query.get("alt") == ["media"]:
            return "download"
        return "list" if _LIST.fullmatch(path) else "get"
    return "create"


def completes_upload(method: str, url: str, headers: Any) -> bool:
    """True for the upload request after which the object exists."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    if query.get("uploadType", [""])[0] in ("media", "multipart"):
        return True
    if method != "PUT":
        return False  # starting a resumable session stores nothing
    found = _FINAL_RANGE.fullmatch(str(headers.get("Content-Range", "")).strip())
    if found is None:
        return False
    last, total = found.groups()
    return last is not None and int(last) + 1 == int(total)


def faulting_handler() -> Callable[..., http.server.BaseHTTPRequestHandler]:
    """gcp-storage-emulator's request handler, wrapped with faults and counters.

    Built on first use, so importing this module does not need the library.
    """
    from gcp_storage_emulator.server import RequestHandler

    class FaultingRequestHandler(RequestHandler):  # type: ignore[misc]
        wfile: Any  # swapped while a `lost` answer is thrown away

        def __init__(
            self, storage: Any, log: RequestLog, injector: list[FaultInjector], *args: Any
        ) -> None:
            self._log = log
            self._injector = injector
            super().__init__(storage, *args)

        def do_GET(self) -> None:
            self._serve("GET", super().do_GET)

        def do_POST(self) -> None:
            self._serve("POST", super().do_POST)

        def do_PUT(self) -> None:
            self._serve("PUT", super().do_PUT)

        def do_DELETE(self) -> None:
            self._serve("DELETE", super().do_DELETE)

        def do_PATCH(self) -> None:
            self._serve("PATCH", super().do_PATCH)

        def _serve(self, method: str, handle: Any) -> None:
            endpoint = endpoint_of(method, self.path)
            with self._log.track(endpoint):
                allow_lost = endpoint != "upload" or completes_upload(
                    method, self.path, self.headers
                )
                rule = self._injector[0].decide(endpoint, allow_lost=allow_lost)
                self._apply(rule, handle)

        def _apply(self, rule: FaultRule | None, handle: Any) -> None:
            if rule is None:
                handle()
            elif rule.kind == "reset":
                self._drop()
            elif rule.kind == "status" and rule.status is not None:
                self._error(rule.status)
            elif rule.kind == "slow":
                time.sleep(rule.seconds)
                handle()
            else:  # lost: the action happens, its answer does not arrive
                self._lose(handle)

        def _lose(self, handle: Any) -> None:
            real = self.wfile
            self.wfile = io.BytesIO()  # the answer goes nowhere
            try:
                handle()
            finally:
                self.wfile = real
            if self._injector[0].lost_drops_connection():
                self._drop()
            else:
                self._error(503, body_read=True)

        def _error(self, code: int, body_read: bool = False) -> None:
            """A JSON API error body, after reading the request body it answers."""
            length = int(self.headers.get("Content-Length") or 0)
            if length and not body_read:
                self.rfile.read(length)
            message = fault_message(code)
            body = json.dumps(
                {
                    "error": {
                        "code": code,
                        "message": message,
                        "errors": [{"message": message, "reason": status_name(code)}],
                    }
                }
            ).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(body)))
            if code == 429:
                self.send_header("Retry-After", "1")
            self.end_headers()
            self.wfile.write(body)

        def _drop(self) -> None:
            """Close with a TCP RST and no answer, like a connection reset."""
            with contextlib.suppress(OSError):
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            self.close_connection = True

    return FaultingRequestHandler
