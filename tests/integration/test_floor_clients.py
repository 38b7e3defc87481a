"""The floor server and the lean clients that ``make bench`` sets podlatency against it with."""

from __future__ import annotations

import json

import pytest

from measure.clients import RawConnection, raw_concurrent, raw_sequential
from measure.floor_app import ANSWER
from measure.versus_floor import floor_server, route_bodies


def test_raw_clients_time_real_answers_from_the_floor() -> None:
    """One raw connection reads every answer whole; sixteen on one loop keep the server busy."""
    server = floor_server()
    try:
        for path, body in route_bodies().items():
            latency, answer = raw_sequential(server.port, path, body, 50)
            assert (latency.count, answer) == (50, ANSWER), path
            assert 0 < latency.p50_ms < 50
        loaded = raw_concurrent(server.port, route_bodies()["/v1/predict"], 16, 0.5)
        assert loaded["count"] > 16
        assert loaded["rps"] > 0
    finally:
        server.stop()


def test_a_refused_request_is_an_error_naming_the_answer() -> None:
    """A non-200 answer is never timed as a success: the client raises with the status line."""
    server = floor_server()
    try:
        connection = RawConnection(server.port, "/no-such-route", json.dumps({"pods": []}).encode())
        with pytest.raises(RuntimeError, match="404"):
            connection.post()
        connection.close()
        with pytest.raises(RuntimeError, match="404"):
            raw_concurrent(server.port, b"{}", 2, 0.2, path="/no-such-route")
    finally:
        server.stop()
