"""Keep-alive HTTP clients on loopback that time requests: one at a time, or many at once."""

from __future__ import annotations

import asyncio
import functools
import http.client
import json
import re
import socket
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles of one measurement, in milliseconds."""

    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> LatencySummary:
        """Summarise durations given in seconds."""
        values = np.asarray(seconds) * 1000.0
        return cls(
            count=len(values),
            p50_ms=round(float(np.percentile(values, 50)), 4),
            p90_ms=round(float(np.percentile(values, 90)), 4),
            p99_ms=round(float(np.percentile(values, 99)), 4),
            mean_ms=round(float(values.mean()), 4),
        )


def post_json(
    connection: http.client.HTTPConnection, body: bytes, path: str = "/v1/predict"
) -> dict[str, Any]:
    """POST ``body`` on a kept-alive connection; the decoded answer, or RuntimeError when it is not 200."""
    connection.request("POST", path, body=body, headers={"content-type": "application/json"})
    response = connection.getresponse()
    payload = response.read()
    if response.status != 200:
        raise RuntimeError(f"{path} answered {response.status}: {payload[:200]!r}")
    answer: dict[str, Any] = json.loads(payload)
    return answer


def sequential_answers(port: int, body: bytes, requests: int) -> list[tuple[float, dict[str, Any]]]:
    """One keep-alive client, after up to 200 warm-up requests: each request's seconds and answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(min(200, requests)):
        post_json(connection, body)
    timed: list[tuple[float, dict[str, Any]]] = []
    for _ in range(requests):
        started = time.perf_counter()
        answer = post_json(connection, body)
        timed.append((time.perf_counter() - started, answer))
    connection.close()
    return timed


def sequential(port: int, body: bytes, requests: int) -> tuple[LatencySummary, LatencySummary]:
    """One keep-alive client: end-to-end latency and the server's model-compute phases."""
    timed = sequential_answers(port, body, requests)
    return LatencySummary.of([seconds for seconds, _ in timed]), model_compute(timed)


def model_compute(timed: list[tuple[float, dict[str, Any]]]) -> LatencySummary:
    """The server's model-compute phases (``predict_ttft`` + ``predict_tpot``) of ``/v1/predict`` answers."""
    return LatencySummary.of(
        [
            (answer["timing_ms"]["predict_ttft"] + answer["timing_ms"]["predict_tpot"]) / 1000.0
            for _, answer in timed
        ]
    )


def concurrent(
    port: int, body: bytes, clients: int, seconds: float, path: str = "/v1/predict"
) -> dict[str, float]:
    """``clients`` keep-alive clients for ``seconds``: throughput and latency percentiles."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop_at = time.monotonic() + seconds
    errors: list[BaseException] = []

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                post_json(connection, body, path)
                latencies[index].append(time.perf_counter() - started)
        except (OSError, RuntimeError) as error:
            errors.append(error)
        finally:
            connection.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed: {errors[0]}")
    merged = [value for values in latencies for value in values]
    if not merged:
        raise RuntimeError(f"no request to {path} finished within {seconds} s")
    summary = LatencySummary.of(merged)
    return {"clients": clients, "rps": round(len(merged) / elapsed, 1), **asdict(summary)}


class RawConnection:
    """One keep-alive HTTP/1.1 connection that sends one prepared POST and reads each answer.

    For latency set against a floor of a few tens of microseconds: ``http.client`` parses every
    response's headers in Python, which would be a large share of what is measured. This sends the
    request's bytes as they are and reads the answer by its ``Content-Length``.
    """

    def __init__(self, port: int, path: str, body: bytes) -> None:
        self._socket = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self._request = head.encode() + body
        self._path = path
        self._pending = b""

    def post(self) -> bytes:
        """Send the request; the answer's body (RuntimeError when the status is not 200)."""
        self._socket.sendall(self._request)
        data = self._pending
        while (head_end := data.find(b"\r\n\r\n")) < 0:
            data += self._received()
        head = data[:head_end]
        length = _CONTENT_LENGTH.search(head)
        if length is None:
            raise RuntimeError(f"{self._path} answered without a Content-Length: {head[:200]!r}")
        end = head_end + 4 + int(length.group(1))
        while len(data) < end:
            data += self._received()
        self._pending = data[end:]
        if not head.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"{self._path} answered {head[:40]!r}: {data[head_end + 4 : end][:200]!r}")
        return data[head_end + 4 : end]

    def _received(self) -> bytes:
        chunk = self._socket.recv(65536)
        if not chunk:
            raise RuntimeError(f"the server closed the connection during {self._path}")
        return chunk

    def close(self) -> None:
        """Close the connection."""
        self._socket.close()


_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


def raw_sequential(port: int, path: str, body: bytes, requests: int) -> tuple[LatencySummary, bytes]:
    """One :class:`RawConnection`, after up to 200 warm-up requests: latency, and the last answer."""
    connection = RawConnection(port, path, body)
    try:
        for _ in range(min(200, requests)):
            connection.post()
        seconds: list[float] = []
        answer = b""
        for _ in range(requests):
            started = time.perf_counter()
            answer = connection.post()
            seconds.append(time.perf_counter() - started)
    finally:
        connection.close()
    return LatencySummary.of(seconds), answer


class _RawClient(asyncio.Protocol):
    """One keep-alive connection of :func:`raw_concurrent`: the prepared request again as each answer ends."""

    def __init__(
        self, request: bytes, stop_at: float, latencies: list[float], done: asyncio.Future[None]
    ) -> None:
        self._request = request
        self._stop_at = stop_at
        self._latencies = latencies
        self._done = done
        self._buffer = b""
        self._sent = 0.0
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)
        self._send()

    def _send(self) -> None:
        assert self._transport is not None  # noqa: S101  (connected)
        self._sent = time.perf_counter()
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        head_end = self._buffer.find(b"\r\n\r\n")
        length = _CONTENT_LENGTH.search(self._buffer, 0, head_end) if head_end >= 0 else None
        if length is None or len(self._buffer) < head_end + 4 + int(length.group(1)):
            return  # the answer is not complete yet
        now = time.perf_counter()
        if not self._buffer.startswith(b"HTTP/1.1 200 "):
            self._finish(RuntimeError(f"answered {self._buffer[:200]!r}"))
            return
        self._latencies.append(now - self._sent)
        self._buffer = self._buffer[head_end + 4 + int(length.group(1)) :]
        if now < self._stop_at:
            self._send()
        else:
            self._finish(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc or RuntimeError("the server closed the connection"))

    def _finish(self, error: BaseException | None) -> None:
        if not self._done.done():
            if error is None:
                self._done.set_result(None)
            else:
                self._done.set_exception(error)
        if self._transport is not None:
            self._transport.close()


def raw_concurrent(
    port: int, body: bytes, clients: int, seconds: float, path: str = "/v1/predict"
) -> dict[str, float]:
    """``clients`` keep-alive connections for ``seconds``, each sending again as an answer ends.

    Like :func:`concurrent`, with far less client work per request (one event loop, the request's
    bytes prepared once, answers read by ``Content-Length``), so that the load reaches the server as
    a load generator in C would send it rather than trickling out of client threads that share the
    interpreter lock.
    """
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    request = head.encode() + body
    latencies: list[float] = []

    async def run() -> float:
        loop = asyncio.get_running_loop()
        stop_at = time.perf_counter() + seconds
        started = time.perf_counter()
        finished: list[asyncio.Future[None]] = []
        transports: list[asyncio.BaseTransport] = []
        try:
            for _ in range(clients):
                done: asyncio.Future[None] = loop.create_future()
                finished.append(done)
                connected = await loop.create_connection(
                    functools.partial(_RawClient, request, stop_at, latencies, done), "127.0.0.1", port
                )
                transports.append(connected[0])
            await asyncio.wait_for(asyncio.gather(*finished), timeout=seconds + 30)
            return time.perf_counter() - started
        finally:  # one client's failure ends the run: the others' connections close too
            for open_transport in transports:
                open_transport.close()

    elapsed = asyncio.run(run())
    if not latencies:
        raise RuntimeError(f"no request to {path} finished within {seconds} s")
    return {
        "clients": clients,
        "rps": round(len(latencies) / elapsed, 1),
        **asdict(LatencySummary.of(latencies)),
    }
