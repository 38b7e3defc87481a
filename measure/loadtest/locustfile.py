"""Locust users, one per endpoint: the four seed designs, ``/v1/predict`` and llm-d's bulk route.

Every user sends the same realistic payloads (``LOADTEST_PODS`` pods per request, default 7, a mix of
idle and queued pods from the synthetic workload) as fast as it can, and validates every answer:
status 200, JSON, one finite, non-negative ``ttft_ms`` and ``tpot_ms`` per pod. Anything else is a
Locust failure. Pick users by class name, e.g. ``locust -f measure/loadtest/locustfile.py V1PredictUser``.

With ``LOADTEST_TIMES_DIR`` set, each Locust process also writes every request's exact response time
(ms) after the ramp-up to ``<dir>/<pid>.json``, per request name (a shed request's time is not an
answer's): Locust's own percentiles are read from rounded buckets, so for sub-10-ms endpoints a p99
could come out above the max. The comparison runner takes percentiles and max from these files alike.

The payloads are built once per Locust process, not per user: building them takes milliseconds of
the process's only core, and 256 users building theirs during the ramp-up held every request in
flight for up to a second.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import time
from pathlib import Path
from typing import Any, ClassVar

from locust import FastHttpUser, constant, events, task

from podlatency.learning.workload import pod_rows

PODS = int(os.environ.get("LOADTEST_PODS", "7"))
PAYLOAD_VARIETY = 64
HEADERS = {"content-type": "application/json"}
TIMES_DIR = os.environ.get("LOADTEST_TIMES_DIR", "")
response_times_ms: dict[str, list[float]] = {}


def note_response_time(name: str, response_time: float, **_: Any) -> None:
    """Keep each request's exact response time (ms), under its request name."""
    response_times_ms.setdefault(name, []).append(round(response_time, 4))


def forget_ramp_up(**_: Any) -> None:
    """Measure after the ramp-up, as Locust's ``--reset-stats`` does."""
    response_times_ms.clear()


def write_response_times(**_: Any) -> None:
    """One file per Locust process."""
    (Path(TIMES_DIR) / f"{os.getpid()}.json").write_text(json.dumps(response_times_ms))


if TIMES_DIR:  # Locust's event hooks are untyped
    events.request.add_listener(note_response_time)  # type: ignore[no-untyped-call]
    events.spawning_complete.add_listener(forget_ramp_up)  # type: ignore[no-untyped-call]
    events.quitting.add_listener(write_response_times)  # type: ignore[no-untyped-call]


@functools.cache
def build_payloads(body_key: str) -> list[str]:
    """``PAYLOAD_VARIETY`` different request bodies with ``PODS`` rows each."""
    return [json.dumps({body_key: pod_rows(PODS, seed=seed)}) for seed in range(PAYLOAD_VARIETY)]


def problem_with(status: int, body: Any, pods: int) -> str | None:
    """Why an answer is wrong, or ``None`` when it is one finite prediction per pod."""
    if status != 200:
        return f"status {status}"
    predictions = body.get("predictions") if isinstance(body, dict) else None
    if not isinstance(predictions, list) or len(predictions) != pods:
        return f"expected {pods} predictions"
    for prediction in predictions:
        for key in ("ttft_ms", "tpot_ms"):
            value = prediction.get(key) if isinstance(prediction, dict) else None
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                return f"{key} is {value!r}"
    return None


class PredictorUser(FastHttpUser):
    """Posts payloads to ``path`` back to back and checks every answer."""

    abstract = True
    wait_time = constant(0)
    path: ClassVar[str] = ""
    body_key: ClassVar[str] = "pods"
    pause_s: float = 0.0

    def on_start(self) -> None:
        """Each user cycles through the payloads from its own offset."""
        payloads = build_payloads(self.body_key)
        offset = id(self) % len(payloads)
        self.payloads = itertools.cycle(payloads[offset:] + payloads[:offset])

    @task
    def predict(self) -> None:
        """One request, validated."""
        with self.client.post(
            self.path, data=next(self.payloads), headers=HEADERS, name=self.path, catch_response=True
        ) as response:
            self.check(response)
        if self.pause_s:  # a shed request asked us to come back later
            time.sleep(self.pause_s)
            self.pause_s = 0.0

    def check(self, response: Any) -> None:
        """Mark the response a success only when it is a valid prediction for every pod."""
        try:
            body = response.json() if response.status_code == 200 else None
        except ValueError:
            response.failure("body is not JSON")
            return
        problem = problem_with(response.status_code or 0, body, PODS)
        if problem is None:
            response.success()
        else:
            response.failure(problem)


class ToThreadUser(PredictorUser):
    """Seed design, the post's original: per-pod ``asyncio.to_thread`` + ``gather``."""

    path = "/seed/to-thread"


class ThreadPoolUser(PredictorUser):
    """Seed design, the post's solution 1: a new thread pool per request."""

    path = "/seed/thread-pool"


class DedicatedPoolUser(PredictorUser):
    """Seed design, the post's solution 2: one long-lived pool, ``run_in_executor`` per pod."""

    path = "/seed/dedicated-pool"


class SeedBatchUser(PredictorUser):
    """Seed design, the post's solution 3: one DataFrame per request."""

    path = "/seed/batch"


class V1PredictUser(PredictorUser):
    """Ours: one float32 matrix, ``inplace_predict`` per target."""

    path = "/v1/predict"


class LlmdBulkStrictUser(PredictorUser):
    """Ours behind llm-d's ``/predict/bulk/strict``."""

    path = "/predict/bulk/strict"
    body_key = "requests"


class ShedAwareUser(V1PredictUser):
    """``/v1/predict`` under overload: answers and load-shedding 503s are counted apart.

    A 503 ``overloaded`` with ``Retry-After`` is the server refusing work on purpose, reported as
    ``/v1/predict [shed]``; valid answers as ``/v1/predict [accepted]``; anything else fails. After
    a shed request the user waits the ``Retry-After`` seconds, as a well-behaved client does.
    """

    def check(self, response: Any) -> None:
        """Sort the response into accepted, shed or failed."""
        if response.status_code == 503 and response.headers.get("Retry-After"):
            try:
                shed = response.json().get("error") == "overloaded"
            except ValueError:
                shed = False
            if shed:
                response.request_meta["name"] = f"{self.path} [shed]"
                response.success()
                # As a router should: fall back for this decision, ask again after Retry-After.
                self.pause_s = float(response.headers["Retry-After"])
                return
        response.request_meta["name"] = f"{self.path} [accepted]"
        super().check(response)
