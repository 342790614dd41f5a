"""Stopping the emulator: at once when idle, and still graceful for a request in flight.

Every test that uses an emulator pays its stop; uvicorn's own loop takes at least 0.1 s
(it sleeps 0.1 s in its shutdown, after up to 0.1 s to notice should_exit).
"""

from __future__ import annotations

import http.client
import threading
import time

from gembatch_async.emulator import EmulatorConfig, EmulatorThread

from ..helpers import TEST_API_KEY

_CONFIG = EmulatorConfig(host="127.0.0.1", port=0, processing_seconds=60)


def _get(port: int, path: str, connection: http.client.HTTPConnection | None = None) -> int:
    conn = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", f"{path}?key={TEST_API_KEY}")
    response = conn.getresponse()
    response.read()
    return response.status


def test_stop_with_an_idle_keep_alive_connection_is_immediate() -> None:
    """An idle keep-alive connection (what SDK clients leave behind) does not hold the stop.

    The best of three stops is under 0.1 s, which uvicorn's own shutdown never is.
    """
    stops = []
    for _ in range(3):
        thread = EmulatorThread(_CONFIG)
        running = thread.__enter__()
        idle = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
        assert _get(running.port, "/v1beta/files", idle) == 200  # kept alive, now idle
        started = time.monotonic()
        thread.stop()
        stops.append(time.monotonic() - started)
        idle.close()
    assert min(stops) < 0.1, stops


def test_stop_lets_a_request_in_flight_finish() -> None:
    """A request being served when the stop comes still gets its whole answer."""
    thread = EmulatorThread(_CONFIG)
    running = thread.__enter__()
    try:
        running.stall("list", 0.3)
        statuses: list[int] = []
        client = threading.Thread(
            target=lambda: statuses.append(_get(running.port, "/v1beta/files"))
        )
        client.start()
        deadline = time.monotonic() + 10
        while running.state()["requests"].get("list", {}).get("count", 0) < 1:
            assert time.monotonic() < deadline, "the request never reached the emulator"
            time.sleep(0.005)
    finally:
        thread.stop()
    client.join(10)
    assert statuses == [200]
