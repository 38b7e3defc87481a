"""The naive server ``make bench`` measures podlatency against: what a user writes after the seed post.

A Litestar sync handler (on its worker-thread pool) decodes the body with msgspec, builds one float32
matrix and calls ``inplace_predict`` once per target, with the same boosters (their load trend and
calibration applied, so its answers are podlatency's). No batching, no phases, no spans. On a model
serving several quantiles it answers every one, as ``/v1/predict`` does when asked for all of them.
``uvicorn measure.naive_app:app``, with ``NAIVE_MODEL_DIR`` naming a model folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
from litestar import Litestar, Response, get, post
from litestar.params import RawBody

from podlatency.bundle import ModelBundle
from podlatency.registry import ModelRegistry
from podlatency.schema import PodFeatures, feature_matrix


class Request(msgspec.Struct):
    pods: list[PodFeatures]


def load_bundle() -> ModelBundle:
    bundle = ModelRegistry(Path(os.environ["NAIVE_MODEL_DIR"])).load_active()
    if bundle is None:
        raise SystemExit("NAIVE_MODEL_DIR holds no active model")
    for booster in bundle.boosters.values():
        booster.set_param({"nthread": 1})
    return bundle


BUNDLE = load_bundle()


@post("/v1/predict", sync_to_thread=True, status_code=200)
def predict(body: RawBody) -> Response[bytes]:
    """Decode, one matrix, one ``inplace_predict`` per target, encode."""
    pods = msgspec.json.decode(body, type=Request).pods
    matrix = feature_matrix(pods)
    predicted = {
        target: BUNDLE.latencies(
            target, booster.inplace_predict(matrix, predict_type="margin"), matrix
        ).tolist()
        for target, booster in BUNDLE.boosters.items()
    }
    pairs = zip(predicted["ttft"], predicted["tpot"], strict=True)
    primary = BUNDLE.primary_output
    if primary is None:
        answer = [{"ttft_ms": ttft, "tpot_ms": tpot} for ttft, tpot in pairs]
    else:
        keys = [repr(quantile) for quantile in BUNDLE.quantiles]
        answer = [
            {
                "ttft_ms": ttft[primary],
                "tpot_ms": tpot[primary],
                "quantiles": {
                    key: {"ttft_ms": t, "tpot_ms": p} for key, t, p in zip(keys, ttft, tpot, strict=True)
                },
            }
            for ttft, tpot in pairs
        ]
    return Response(msgspec.json.encode({"predictions": answer}), media_type="application/json")


@get("/readyz", sync_to_thread=False)
def readyz() -> str:
    """Ready once imported: the boosters load at import."""
    return "ready"


app = Litestar([predict, readyz])
