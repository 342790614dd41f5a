"""The emulator app's shell: routing, the common request pipeline (API-key and other
credential checks, latency, stalls, faults, the request log), the admin routes under
``/_emulator/``, and the state document. The APIs it serves are RouteExtensions: the
Gemini API's routes (_gemini.py) and Vertex AI's (_vertex.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import anyio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gembatch_async.emulator._config import EmulatorConfig
from gembatch_async.emulator._errors import (
    ApiError,
    fault_message,
    generic_quota_error,
    rate_limit_error,
)
from gembatch_async.emulator._faults import FaultInjector, FaultRule, RequestLog, parse_fault_spec
from gembatch_async.emulator._scenarios import SCENARIO_ACTIONS, Scenarios
from gembatch_async.emulator._store import FILE_LIFETIME_SECONDS, Store
from gembatch_async.emulator._webhooks import WebhookSender
from gembatch_async.emulator._wire import _json, _json_body

logger = logging.getLogger(__name__)

# Set by the server's protocol (see _serve.py): a callable that drops the TCP connection.
ABORT_EXTENSION = "gembatch.abort"

_PREFIX = r"^(?P<prefix>(?:/[^/]+)*?)"

#: Where the emulator publishes its webhook signing keys (see _webhooks).
JWKS_PATH = "/.well-known/jwks.json"
_ADMIN_ACTIONS = "|".join(("state", "reset", "faults", *SCENARIO_ACTIONS))

Handler = Callable[[Request, "re.Match[str]"], Awaitable[Response]]
#: Checks a request's credentials; raises ApiError (401/403) when they will not do.
Authenticate = Callable[[Request], None]


def _error_response(err: ApiError, upload: bool) -> JSONResponse:
    response = JSONResponse(err.body(), status_code=err.code, headers=err.headers)
    if upload:
        # Without this header the SDK resends the chunk three times (1, 2, 4 s sleeps).
        response.raw_headers.append((b"X-Goog-Upload-Status", b"final"))
    return response


class _RawEndpoint:
    """ASGI adapter to EmulatorApp._asgi_entry."""

    def __init__(self, app: EmulatorApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app._asgi_entry(scope, receive, send)


@dataclasses.dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    endpoint: str  # name used by faults and the request log
    handler: Handler
    authenticate: Authenticate


@dataclasses.dataclass(frozen=True)
class ExtraRoute:
    """A route served by an extension. ``tail`` is a regex for the path after any prefix;
    ``endpoint`` names it for faults and the request log: one name for one kind of call,
    whichever API serves it (``_faults.ENDPOINTS`` are the names a fault spec may use)."""

    method: str
    tail: str
    endpoint: str
    handler: Handler
    authenticate: Authenticate


class RouteExtension(Protocol):
    """An API the app serves (the Gemini API's routes, _gemini.py; Vertex AI's,
    _vertex.py). Every request goes through the same credential check, latency, faults
    and request log, whichever API it is for."""

    def routes(self) -> list[ExtraRoute]:
        """The routes it serves."""
        ...

    async def refresh(self) -> None:
        """Bring clock-driven state up to date (called before the state document)."""
        ...

    def state(self) -> dict[str, list[dict[str, Any]]]:
        """Its lists for GET /_emulator/state, by key."""
        ...

    def reset(self) -> None:
        """Forget everything (POST /_emulator/reset)."""
        ...


class EmulatorApp:
    """Holds the store, faults and counters; `asgi` is the Starlette app uvicorn serves."""

    def __init__(
        self,
        config: EmulatorConfig,
        store: Store,
        extensions: Sequence[RouteExtension],
        scenarios: Scenarios,
        webhooks: WebhookSender,
    ) -> None:
        self.config = config
        self.store = store
        self.extensions = tuple(extensions)
        self.log = RequestLog()
        self.faults = FaultInjector(parse_fault_spec(config.faults), config.fault_seed)
        # Shared with the Gemini routes, which honour scenarios and announce webhooks.
        self.scenarios = scenarios
        self.webhooks = webhooks
        self._routes = self._build_routes()
        # A class instance (not a function) makes Starlette pass the raw ASGI call through,
        # for every HTTP method.
        self.asgi = Starlette(routes=[Route("/{path:path}", endpoint=_RawEndpoint(self))])

    # ----- routing -----------------------------------------------------------------------

    def _build_routes(self) -> list[_Route]:
        return [
            _Route(
                x.method,
                re.compile(_PREFIX + x.tail + "$"),
                x.endpoint,
                x.handler,
                x.authenticate,
            )
            for extension in self.extensions
            for x in extension.routes()
        ]

    async def _asgi_entry(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Raw ASGI endpoint, so a handler may also answer by dropping the connection."""
        request = Request(scope, receive)
        response = await self._dispatch(request)
        if response is None:
            await self._drop_connection(scope)
            return
        await response(scope, receive, send)

    async def _dispatch(self, request: Request) -> Response | None:
        path = request.url.path
        if path == JWKS_PATH and request.method == "GET":  # public, like Google's key set
            return _json(self.webhooks.jwks())
        admin = re.match(_PREFIX + rf"/_emulator/(?P<action>{_ADMIN_ACTIONS})$", path)
        if admin:
            return await self._admin(request, admin.group("action"))
        for route in self._routes:
            match = route.pattern.match(path)
            if match and route.method == request.method:
                return await self._api(request, route, match)
        for route in self._routes:
            if route.pattern.match(path):
                err = ApiError(405, f"Method {request.method} not allowed on {path}.")
                return _error_response(err, upload=False)
        return _error_response(ApiError(404, f"Method not found: {path}"), upload=False)

    async def _drop_connection(self, scope: Scope) -> None:
        """Close the TCP connection without an HTTP response (the `reset`/`lost` faults)."""
        abort = scope.get("extensions", {}).get(ABORT_EXTENSION)
        if abort is None:  # served by something other than serve_emulator
            raise RuntimeError("dropping connections needs serve_emulator's protocol")
        abort()
        # Let the loop run connection_lost, so uvicorn sees the disconnect and stays quiet.
        await asyncio.sleep(0.01)

    # ----- the common request pipeline ---------------------------------------------------

    async def _api(self, request: Request, route: _Route, match: re.Match[str]) -> Response | None:
        is_upload = route.endpoint == "upload"
        is_chunk = is_upload and "upload_id" in request.query_params
        final_chunk = is_chunk and "finalize" in request.headers.get("x-goog-upload-command", "")
        with self.log.track(route.endpoint):
            if self.config.latency_ms > 0:
                await anyio.sleep(self.config.latency_ms / 1000)
            stall = self.scenarios.stall_seconds(route.endpoint)
            if stall > 0:
                await anyio.sleep(stall)
            # `lost` on uploads hits the finalizing chunk: the file is stored, the answer lost.
            rule = self.faults.decide(route.endpoint, allow_lost=not is_upload or final_chunk)
            if rule is not None and rule.kind == "reset":
                return None
            if rule is not None and rule.kind == "slow":  # received whole, then handled late:
                await request.body()  # the action happens even if the client stops waiting
                await anyio.sleep(rule.seconds)
                rule = None
            response = await self._run_handler(request, route, match, rule, is_chunk, is_upload)
            if rule is not None and rule.kind == "lost":
                if self.faults.lost_drops_connection():
                    return None
                return _error_response(ApiError(503, fault_message(503)), upload=is_upload)
            return response

    async def _run_handler(
        self,
        request: Request,
        route: _Route,
        match: re.Match[str],
        rule: FaultRule | None,
        is_chunk: bool,
        is_upload: bool,
    ) -> Response:
        try:
            if rule is not None and rule.kind == "status" and rule.status is not None:
                raise _fault_error(rule.status, rule.body)
            if not is_chunk:  # the upload URL itself is the credential for chunks
                route.authenticate(request)
            self.store.expire_files()  # every answer sees the files the service still has
            return await route.handler(request, match)
        except ApiError as err:
            if is_chunk:
                await _drain(request)  # read the body so the client sees our answer
            return _error_response(err, upload=is_upload)
        except ClientDisconnect:
            raise
        except Exception:
            logger.exception("emulator handler failed")
            return _error_response(ApiError(500, fault_message(500)), upload=is_upload)

    # ----- admin -------------------------------------------------------------------------

    async def _admin(self, request: Request, action: str) -> Response:
        if action == "state" and request.method == "GET":
            for extension in self.extensions:
                await extension.refresh()
            return _json(self.state())
        if action == "reset" and request.method == "POST":
            self.webhooks.reset()
            for extension in self.extensions:
                extension.reset()
            self.log.reset()
            self.scenarios.clear()
            self.faults = FaultInjector(
                parse_fault_spec(self.config.faults), self.config.fault_seed
            )
            return _json({})
        if action == "faults" and request.method == "POST":
            return await self._admin_faults(request)
        if action in SCENARIO_ACTIONS and request.method == "POST":
            return await self._admin_scenario(request, action)
        return _error_response(ApiError(405, f"Method {request.method} not allowed."), False)

    async def _admin_faults(self, request: Request) -> Response:
        try:
            body = await _json_body(request)
            spec = body.get("faults", "")
            seed = body.get("seed")
            if not isinstance(spec, str) or not (seed is None or isinstance(seed, int)):
                raise ApiError(400, "Expected {'faults': str, 'seed': int | null}.")
            rules = parse_fault_spec(spec)
        except ValueError as exc:
            return _error_response(ApiError(400, str(exc)), upload=False)
        except ApiError as err:
            return _error_response(err, upload=False)
        self.faults = FaultInjector(rules, seed)
        return _json({"faults": spec, "seed": seed})

    async def _admin_scenario(self, request: Request, action: str) -> Response:
        try:
            body = await _json_body(request)
            return _json(self.scenarios.apply(action, body, self.store, FILE_LIFETIME_SECONDS))
        except ApiError as err:
            return _error_response(err, upload=False)

    def state(self) -> dict[str, Any]:
        """The /_emulator/state document: each API's lists, then the request counters and
        the webhook deliveries."""
        document: dict[str, Any] = {}
        for extension in self.extensions:
            document.update(extension.state())
        document["requests"] = self.log.snapshot()
        document["webhooks"] = list(self.webhooks.log)
        return document


# ----- small helpers -------------------------------------------------------------------------


def _fault_error(status: int, body: str | None = None) -> ApiError:
    if status == 429:
        return generic_quota_error() if body == "generic" else rate_limit_error(fault_message(429))
    return ApiError(status, fault_message(status))


async def _drain(request: Request) -> None:
    """Consume an unread request body so the connection stays usable for the answer."""
    try:
        async for _ in request.stream():
            pass
    except (RuntimeError, ClientDisconnect):
        pass
