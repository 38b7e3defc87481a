"""The seam the batched answer relies on in Litestar: these fail first when an upgrade moves it.

``BatchedPrediction`` is a ``Response`` whose ``to_asgi_response`` returns an ``ASGIResponse`` subclass
that skips ``ASGIResponse.__init__`` (headers and body are only known once the batch is done) and is
then called as an ASGI app. pyproject pins the Litestar range this was tested with.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version
from pathlib import Path
from typing import Any

from litestar import Response
from litestar.response.base import ASGIResponse
from litestar.testing import TestClient
from opentelemetry.sdk.trace import TracerProvider

from podlatency.runtime import Runtime
from podlatency.settings import Settings
from podlatency.web.app import create_app
from podlatency.web.batched import BatchedPrediction, _AwaitedAnswer
from podlatency.workload import pod_rows


def test_litestar_is_in_the_tested_range() -> None:
    """The installed Litestar is a 2.25 release, the range pyproject pins."""
    major, minor = (int(part) for part in version("litestar").split(".")[:2])
    assert (major, minor) == (2, 25)


def test_the_response_hooks_keep_their_shape() -> None:
    """Litestar still builds an ASGI app with to_asgi_response(app, request, ...) and calls it as such.

    An ASGIResponse is still called as (scope, receive, send).
    """
    hook = inspect.signature(Response.to_asgi_response)
    assert list(hook.parameters)[:3] == ["self", "app", "request"]
    assert all(
        parameter.kind is inspect.Parameter.KEYWORD_ONLY for parameter in list(hook.parameters.values())[3:]
    )
    assert list(inspect.signature(ASGIResponse.__call__).parameters) == ["self", "scope", "receive", "send"]
    assert issubclass(BatchedPrediction, Response)
    assert issubclass(_AwaitedAnswer, ASGIResponse)
    assert "to_asgi_response" in BatchedPrediction.__dict__
    assert "__call__" in _AwaitedAnswer.__dict__


def test_a_batched_answer_goes_out_whole(model_dir: Path) -> None:
    """Through Litestar's whole response path, a batched route answers 200 with its JSON and length."""
    runtime = Runtime(Settings(model_dir=model_dir, device="cpu", batching=True), TracerProvider())
    with TestClient(create_app(runtime)) as client:
        answer = client.post("/v1/predict", json={"pods": pod_rows(3)})
        body: dict[str, Any] = answer.json()
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/json"
        assert int(answer.headers["content-length"]) == len(answer.content)
        assert len(body["predictions"]) == 3
