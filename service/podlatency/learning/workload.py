"""A synthetic LLM-serving workload: pod states and the latencies a request would see on them.

It stands in for recorded router traffic so that ``podlatency serve`` has a real model from the first
command. The shape follows how a vLLM-style server behaves; the constants are plausible for a mid-size
model on one GPU, not measurements of any particular one.

Pod state (one row per pod and moment):

- ``kv_cache_percentage``: Beta(2, 3), higher when more requests run.
- ``input_token_length``: log-normal around 700 tokens, 1..32k.
- ``num_request_waiting``: 0 on most pods (idle or keeping up); a geometric queue on the rest.
- ``num_request_running``: Poisson around 8 plus a share of the queue.
- ``num_tokens_generated``: geometric, the new request's tokens so far (0 for a new request).
- ``prefix_cache_score``: 0 on half the rows, uniform on the rest.
- ``pod_type``: mostly ``""`` (aggregated), some ``prefill`` and ``decode`` pods.
- ``prefill_tokens_in_flight`` / ``decode_tokens_in_flight``: the running requests' work.
- ``encoder_input_size``: 0 on most prompts (text only); 1-8 multimodal items (images) on a fifth.
- ``encoder_matched_size``: how many of those the pod's encoder cache holds (none, some or all).

Latencies:

- TTFT grows with the uncached prompt (``input_token_length * (1 - prefix_cache_score)``), the queue
  (each waiting request costs a share of a prefill), running requests and KV-cache pressure (pre-emption
  near a full cache), and each multimodal item the encoder cache does not hold (tens of ms of encoder
  time per image). Its noise is log-normal, with a heavier tail when requests are queued.
- TPOT grows with running requests, decode tokens in flight and KV-cache pressure; decode pods are a
  little faster per token, prefill pods pay for interference.

Everything is drawn from one ``numpy.random.Generator``: the same seed gives the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from podlatency.schema import FEATURE_NAMES, POD_TYPE_CODES, RAW_FEATURES, add_derived_columns

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class WorkloadSample:
    """Pod states as the model's float32 matrix, and the latencies observed on them."""

    features: npt.NDArray[np.float32]
    ttft_ms: FloatArray
    tpot_ms: FloatArray
    pod_types: list[str]

    def rows(self) -> list[dict[str, object]]:
        """The pod states as request rows (JSON-ready dicts with the llm-d field names)."""
        names = RAW_FEATURES
        fractions = {"kv_cache_percentage", "prefix_cache_score"}
        result: list[dict[str, object]] = []
        for values, pod_type in zip(self.features[:, : len(names)].tolist(), self.pod_types, strict=True):
            row: dict[str, object] = {
                name: (round(value, 4) if name in fractions else round(value))
                for name, value in zip(names, values, strict=True)
            }
            row["pod_type"] = pod_type
            result.append(row)
        return result


def generate(samples: int, seed: int = 0, queued_share: float = 0.4, slowdown: float = 1.0) -> WorkloadSample:
    """Draw ``samples`` pod states and their latencies; ``queued_share`` of pods have a queue.

    ``slowdown`` scales every latency: a fleet that got slower (a bigger model, older GPUs), used to
    test that retraining follows the new truth.
    """
    rng = np.random.default_rng(seed)
    n = samples
    queued = rng.random(n) < queued_share
    waiting = np.where(queued, rng.geometric(0.15, n), 0).astype(np.float64)
    running = rng.poisson(8.0, n) + np.minimum(waiting, 24) * 0.5
    running = np.floor(running)
    kv = np.clip(rng.beta(2.0, 3.0, n) + running / 120.0, 0.0, 1.0)
    input_tokens = np.clip(np.round(rng.lognormal(np.log(700.0), 1.0, n)), 1, 32_768)
    generated = np.where(rng.random(n) < 0.5, 0, rng.geometric(1 / 200.0, n)).astype(np.float64)
    generated = np.minimum(generated, 8_192)
    prefix = np.where(rng.random(n) < 0.5, 0.0, rng.random(n))
    pod_type_draw = rng.random(n)
    pod_types = np.where(pod_type_draw < 0.7, "", np.where(pod_type_draw < 0.85, "prefill", "decode"))
    prefill_in_flight = np.round(running * rng.lognormal(np.log(300.0), 0.8, n) * 0.3)
    decode_in_flight = np.round(running * rng.lognormal(np.log(400.0), 0.6, n))

    # Drawn after the rest, so the columns above are the same for a seed as before they existed.
    encoder_items = np.where(rng.random(n) < 0.2, rng.integers(1, 9, n), 0).astype(np.float64)
    encoder_matched = np.floor(encoder_items * rng.choice([0.0, 0.5, 1.0], n))

    uncached = input_tokens * (1.0 - prefix)
    pressure = np.maximum(kv - 0.8, 0.0) / 0.2  # 0 below 80% KV use, 1 at a full cache
    is_prefill = pod_types == "prefill"
    is_decode = pod_types == "decode"

    ttft_base = (
        12.0
        + uncached * 0.045
        + waiting * (35.0 + 0.02 * input_tokens)
        + running * 1.8
        + prefill_in_flight * 0.004
        + pressure * (40.0 + uncached * 0.03)
        + is_decode * 25.0  # KV transfer from a prefill pod
        + (encoder_items - encoder_matched) * 40.0  # vision encoder time per uncached image
    )
    ttft_sigma = 0.08 + 0.07 * np.sqrt(waiting)
    ttft = ttft_base * rng.lognormal(0.0, ttft_sigma) * slowdown

    tpot_base = (
        6.0
        + running * 0.55
        + decode_in_flight * 0.0009
        + kv * 4.0
        + pressure * 10.0
        + generated * 0.001
        + is_prefill * 3.0
        - is_decode * 1.5
    )
    tpot = tpot_base * rng.lognormal(0.0, 0.06 + 0.02 * np.sqrt(waiting)) * slowdown

    matrix = np.empty((n, len(FEATURE_NAMES)), dtype=np.float32)
    columns = [
        kv,
        input_tokens,
        waiting,
        running,
        generated,
        prefix,
        prefill_in_flight,
        decode_in_flight,
        encoder_items,
        encoder_matched,
    ]
    for index, column in enumerate(columns):
        matrix[:, index] = column
    matrix[:, len(RAW_FEATURES)] = [POD_TYPE_CODES[str(kind)] for kind in pod_types]
    add_derived_columns(matrix)
    return WorkloadSample(features=matrix, ttft_ms=ttft, tpot_ms=tpot, pod_types=[str(t) for t in pod_types])


def router_observations(
    requests: int, seed: int = 0, streamed_share: float = 1.0, slowdown: float = 1.0
) -> list[dict[str, object]]:
    """Observed samples shaped as the llm-d router sends them to ``/add_training_data_bulk``.

    Each finished request becomes a TTFT row (``actual_tpot_ms`` 0, ``num_tokens_generated`` 0) and,
    when it was streamed (a ``streamed_share`` of requests), a TPOT row (``actual_ttft_ms`` 0, and
    ``prefix_cache_score``, ``num_tokens_generated`` and the encoder fields 0). Every row has an
    RFC3339 ``timestamp``, and ``decode_tokens_in_flight`` 0 (the router does not report it yet; the
    latencies still depend on it). With every request streamed, half the rows are TTFT-only, half TPOT-only.
    ``slowdown`` is :func:`generate`'s.
    """
    sample = generate(requests, seed=seed, slowdown=slowdown)
    streamed = np.random.default_rng(seed + 1).random(requests) < streamed_share
    observations: list[dict[str, object]] = []
    for index, row in enumerate(sample.rows()):
        timestamp = f"2026-12-01T12:{index // 60 % 60:02d}:{index % 60:02d}.{index:09d}Z"
        row["decode_tokens_in_flight"] = 0
        observations.append(
            row
            | {
                "num_tokens_generated": 0,
                "actual_ttft_ms": float(sample.ttft_ms[index]),
                "actual_tpot_ms": 0.0,
                "timestamp": timestamp,
            }
        )
        if streamed[index]:
            observations.append(
                row
                | {
                    "num_tokens_generated": 0,
                    "prefix_cache_score": 0.0,
                    "encoder_input_size": 0,
                    "encoder_matched_size": 0,
                    "actual_ttft_ms": 0.0,
                    "actual_tpot_ms": float(sample.tpot_ms[index]),
                    "timestamp": timestamp,
                }
            )
    return observations


def single_regime_observations(
    requests: int, seed: int = 0, noise: str = "gaussian"
) -> tuple[list[dict[str, object]], FloatArray]:
    """A small deployment that sits in one regime, as router rows, and each request's tokens in flight.

    KV-cache use, queue depth and prefix score are fixed; latency grows with tokens in flight, which
    grow over the run (load ramps up). ``noise`` is ``gaussian`` (constant spread) or ``lognormal``
    (spread proportional to latency). Each request is a TTFT row and a TPOT row. Used to check that
    quantile models stay calibrated across the range of load.
    """
    rng = np.random.default_rng(seed)
    in_flight = np.sort(rng.uniform(0, 20_000, requests))
    ttft_base, tpot_base = 40.0 + in_flight * 0.004, 10.0 + in_flight * 0.001
    if noise == "lognormal":
        ttft, tpot = (
            ttft_base * rng.lognormal(0.0, 0.15, requests),
            tpot_base * rng.lognormal(0.0, 0.15, requests),
        )
    else:
        ttft, tpot = ttft_base + rng.normal(0.0, 6.0, requests), tpot_base + rng.normal(0.0, 2.0, requests)
    state = {
        "kv_cache_percentage": 0.5,
        "input_token_length": 800,
        "num_request_waiting": 0,
        "num_request_running": 8,
        "num_tokens_generated": 0,
        "prefix_cache_score": 0.0,
    }
    rows: list[dict[str, object]] = []
    for index in range(requests):
        load = {
            "prefill_tokens_in_flight": round(in_flight[index] / 4),
            "decode_tokens_in_flight": round(in_flight[index]),
        }
        rows.append(state | load | {"actual_ttft_ms": float(ttft[index]), "actual_tpot_ms": 0.0})
        rows.append(state | load | {"actual_ttft_ms": 0.0, "actual_tpot_ms": float(tpot[index])})
    return rows, in_flight


def pod_rows(count: int, seed: int = 0, queued_share: float = 0.4) -> list[dict[str, object]]:
    """``count`` realistic request rows (a mix of idle and queued pods), e.g. for load tests."""
    return generate(count, seed=seed, queued_share=queued_share).rows()


def fleet_decisions(
    decisions: int, candidates: int = 4, seed: int = 0, queued_share: float = 0.2
) -> npt.NDArray[np.float32]:
    """Scheduling decisions as a router sees them: ``(decisions, candidates, features)`` float32.

    The candidates of one decision are pods of one balanced, aggregated fleet asked about the same
    request. They share its prompt (``input_token_length``, ``encoder_input_size``, the prefix-cache
    score) and, as a router that balances load keeps them, a fleet-wide load level (a pod state drawn
    as :func:`generate` draws them, a ``queued_share`` of them with a queue); each differs from that
    level by a few running requests, a request or two in its queue, a few points of KV-cache use and
    the prefill work that comes with them: the near-ties a router has to rank. Router-shaped: a new
    request has generated no tokens, and the router reports no ``decode_tokens_in_flight``.
    """
    rng = np.random.default_rng(seed + 1)
    level = generate(decisions, seed=seed, queued_share=queued_share).features
    fleet = np.repeat(level[:, None, :], candidates, axis=1)
    column = FEATURE_NAMES.index
    shape = (decisions, candidates)
    extra_running = rng.poisson(1.5, shape).astype(np.float32)
    fleet[:, :, column("num_request_running")] += extra_running
    queued = fleet[:, :, column("num_request_waiting")] > 0
    fleet[:, :, column("num_request_waiting")] += queued * rng.integers(0, 3, shape)
    kv = fleet[:, :, column("kv_cache_percentage")] + rng.normal(0.0, 0.02, shape) + extra_running / 120.0
    fleet[:, :, column("kv_cache_percentage")] = np.round(np.clip(kv, 0.0, 1.0), 4)
    fleet[:, :, column("prefill_tokens_in_flight")] += np.round(
        extra_running * rng.lognormal(np.log(90.0), 0.8, shape)
    )
    for unreported in ("num_tokens_generated", "decode_tokens_in_flight", "pod_type_code"):
        fleet[:, :, column(unreported)] = 0.0
    flat = fleet.reshape(decisions * candidates, len(FEATURE_NAMES))
    add_derived_columns(flat)
    return flat.reshape(decisions, candidates, len(FEATURE_NAMES))
