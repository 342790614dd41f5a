"""Running the emulator: inside the current event loop, or in a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import struct
import threading
import urllib.request
from collections.abc import AsyncIterator, Generator, Iterator
from types import TracebackType
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from gembatch_async.emulator._app import ABORT_EXTENSION, EmulatorApp
from gembatch_async.emulator._config import EmulatorConfig
from gembatch_async.emulator._gemini import GeminiRoutes
from gembatch_async.emulator._scenarios import Scenarios
from gembatch_async.emulator._store import Store
from gembatch_async.emulator._vertex import VertexRoutes
from gembatch_async.emulator._webhooks import WebhookSender

_STARTUP_TIMEOUT = 30.0
_GRACEFUL_SHUTDOWN_SECONDS = 2
#: The main loop's wake-up when nothing asks it to stop (uvicorn refreshes its Date header).
_IDLE_TICK_SECONDS = 1.0
_DRAIN_POLL_SECONDS = 0.005


class _AbortableH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus a scope extension that drops the TCP connection.

    ASGI has no way to close a connection without answering (an exception in the app makes
    uvicorn send a 500), so the `reset` and `lost` faults need the transport itself.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        inner = self.app

        async def app_with_abort(scope: Any, receive: Any, send: Any) -> None:
            scope.setdefault("extensions", {})[ABORT_EXTENSION] = self._abort_connection
            await inner(scope, receive, send)

        self.app = app_with_abort

    def connection_made(self, transport: Any) -> None:
        # No Nagle: uvicorn writes a response's head and body separately, and
        # Nagle holds the body until the client ACKs the head, which a client
        # with delayed ACKs sends 40 ms later: every keep-alive request took 44 ms.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)

    def _abort_connection(self) -> None:
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            # SO_LINGER 0: close with a TCP RST, like a real connection reset.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its owner (the CLI or the tests)
    and stops as soon as it is asked to.

    uvicorn looks at ``should_exit`` every 0.1 s, then its shutdown sleeps 0.1 s and polls
    its connections every 0.1 s: about 0.2 s per stop, paid by every test's emulator.
    Here setting ``should_exit`` wakes the main loop, and shutdown takes uvicorn's steps
    (stop listening, ask each connection to close after its response, wait for them
    within the graceful timeout, then cancel what is left) polling every few ms.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        self._exit_requested = False
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        super().__init__(config)

    @property
    def should_exit(self) -> bool:
        return self._exit_requested

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._exit_requested = value
        if value and self._loop is not None and self._wake is not None:
            # Thread-safe: the owner may stop the server from another thread.
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to wake
                self._loop.call_soon_threadsafe(self._wake.set)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            # on_tick refreshes the Date header when counter % 10 == 0, so each wake-up
            # (asked to exit, or a second passed) counts as ten of uvicorn's 0.1 s ticks.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), _IDLE_TICK_SECONDS)
            counter = (counter + 10) % 864000
            should_exit = await self.on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()  # idle keep-alive: closed now; busy: after its response
        try:
            await asyncio.wait_for(self._drained(), self.config.timeout_graceful_shutdown)
        except asyncio.TimeoutError:
            for task in self.server_state.tasks:
                task.cancel()
        if not self.force_exit:
            await self.lifespan.shutdown()

    def _busy(self) -> bool:
        state = self.server_state
        return bool(state.connections or state.tasks) and not self.force_exit

    async def _drained(self) -> None:
        """Every connection closed and every request task done."""
        # Polled: uvicorn sets no event when its last connection closes.
        while self._busy():  # noqa: ASYNC110
            await asyncio.sleep(_DRAIN_POLL_SECONDS)
        for server in self.servers:
            await server.wait_closed()


def _url_host(host: str) -> str:
    """The host to put in URLs: wildcard binds are reached through loopback."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


@dataclasses.dataclass(frozen=True)
class RunningEmulator:
    """A started emulator: where to reach it, plus sync admin helpers for tests."""

    host: str
    port: int
    base_url: str  # e.g. "http://127.0.0.1:41234", no trailing slash

    def _admin(self, action: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            f"{self.base_url}/_emulator/{action}",
            data=data,
            method="GET" if action == "state" else "POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            result: dict[str, Any] = json.loads(response.read() or b"{}")
            return result

    def state(self) -> dict[str, Any]:
        """GET /_emulator/state: files, batches and request counters."""
        return self._admin("state")

    def reset(self) -> None:
        """POST /_emulator/reset: forget every file, batch and counter."""
        self._admin("reset", {})

    def set_faults(self, spec: str, seed: int | None = None) -> None:
        """POST /_emulator/faults: replace the fault spec (urllib raises HTTPError on 400)."""
        self._admin("faults", {"faults": spec, "seed": seed})

    def end_batch(self, name: str, state: str) -> None:
        """POST /_emulator/end-batch: the batch ends now, BATCH_STATE_FAILED or _EXPIRED."""
        self._admin("end-batch", {"name": name, "state": state})

    def expire_file(self, name: str, seconds: float) -> None:
        """POST /_emulator/expire-file: the file now expires in ``seconds``."""
        self._admin("expire-file", {"name": name, "seconds": seconds})

    def refuse_delete(self, name: str) -> None:
        """POST /_emulator/refuse-delete: deleting this file answers 400 from now on."""
        self._admin("refuse-delete", {"name": name})

    def stall(self, endpoint: str, seconds: float) -> None:
        """POST /_emulator/stall: requests to ``endpoint`` arriving from now on wait ``seconds``."""
        self._admin("stall", {"endpoint": endpoint, "seconds": seconds})

    def unlist(self, name: str) -> None:
        """POST /_emulator/unlist: ``batches.list`` leaves the batch out (GET still finds it)."""
        self._admin("unlist", {"name": name})

    def advance_clock(self, seconds: float) -> None:
        """POST /_emulator/advance-clock: every job and upload is ``seconds`` older now."""
        self._admin("advance-clock", {"seconds": seconds})


def _bind(host: str, port: int) -> socket.socket:
    """Bind ourselves, so a busy port raises OSError here instead of uvicorn's sys.exit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def _wait_started(server: uvicorn.Server, finished: anyio.Event) -> None:
    with anyio.fail_after(_STARTUP_TIMEOUT):
        while not server.started:
            if finished.is_set():
                raise RuntimeError("the emulator's HTTP server stopped during startup")
            await anyio.sleep(0.005)


@contextlib.asynccontextmanager
async def serve_emulator(config: EmulatorConfig) -> AsyncIterator[RunningEmulator]:
    """Serve the emulator in the current event loop until the `async with` block ends."""
    store = Store(config.state_dir, config.processing_seconds, config.expire_after_seconds)
    try:
        scenarios, webhooks = Scenarios(), WebhookSender(config.webhook_faults)
        gemini = GeminiRoutes(config, store, scenarios, webhooks)
        vertex = VertexRoutes(config, store.root, store.persistent, store.clock)
        app = EmulatorApp(config, store, [gemini, vertex], scenarios, webhooks)
        sock = _bind(config.host, config.port)
        uv_config = uvicorn.Config(
            app.asgi,
            http=_AbortableH11Protocol,
            lifespan="off",
            access_log=False,
            log_level="warning",
            log_config=None,
            timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
        )
        server = _QuietServer(uv_config)
        finished = anyio.Event()

        async def run_server() -> None:
            try:
                await server.serve(sockets=[sock])
            finally:
                finished.set()

        sending = anyio.CancelScope()

        async def send_webhooks() -> None:
            with sending:
                await webhooks.run(gemini.state_of)

        with sock:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_server)
                tg.start_soon(send_webhooks)
                try:
                    await _wait_started(server, finished)
                    port = int(sock.getsockname()[1])
                    url_host = _url_host(config.host)
                    yield RunningEmulator(config.host, port, f"http://{url_host}:{port}")
                finally:
                    server.should_exit = True
                    sending.cancel()  # the webhook sender runs until told
    finally:
        store.close()


class EmulatorThread:
    """Runs `serve_emulator` on its own event loop in a daemon thread (a sync context manager)."""

    def __init__(self, config: EmulatorConfig, startup_timeout: float = _STARTUP_TIMEOUT) -> None:
        self.config = config
        self.startup_timeout = startup_timeout
        self._ready = threading.Event()
        self._running: RunningEmulator | None = None
        self._error: BaseException | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._stop: anyio.Event | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunningEmulator:
        self._thread = threading.Thread(target=self._run, name="gembatch-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.startup_timeout):
            raise RuntimeError(f"emulator did not start within {self.startup_timeout} s")
        if self._error is not None or self._running is None:
            self._thread.join(5)
            raise RuntimeError("emulator failed to start") from self._error
        return self._running

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the server and join the thread (idempotent)."""
        if self._token is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                anyio.from_thread.run_sync(self._stop.set, token=self._token)
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def _run(self) -> None:
        try:
            anyio.run(self._main)
        except BaseException as exc:  # reported to __enter__, never lost silently
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._token = anyio.lowlevel.current_token()
        self._stop = anyio.Event()
        async with serve_emulator(self.config) as running:
            self._running = running
            self._ready.set()
            await self._stop.wait()


@contextlib.contextmanager
def emulator_thread(config: EmulatorConfig) -> Iterator[RunningEmulator]:
    """Function form of EmulatorThread."""
    with EmulatorThread(config) as running:
        yield running
