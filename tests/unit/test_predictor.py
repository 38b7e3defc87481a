"""Batched prediction matches XGBoost's own predict, on the device asked for."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
import xgboost as xgb

from podlatency.bundle import ModelBundle
from podlatency.engines.predictor import ModelHolder, Predictor, cuda_usable, resolve_device
from podlatency.errors import DeviceUnavailable
from podlatency.learning.workload import pod_rows
from podlatency.schema import FEATURE_NAMES, PodMetrics, feature_matrix


def rows(count: int, seed: int = 11) -> list[PodMetrics]:
    return [msgspec.convert(row, PodMetrics) for row in pod_rows(count, seed=seed)]


@pytest.mark.parametrize("count", [1, 7, 300])
def test_predictions_equal_xgboost_predict(small_bundle: ModelBundle, count: int) -> None:
    """inplace_predict on our float32 matrix equals Booster.predict on a DMatrix of the same rows.

    Both as latencies: the margin, the bundle's load trend, back from logs, clipped at 0.
    """
    predictor = Predictor(small_bundle, "cpu", nthread=1)
    matrix = feature_matrix(rows(count))
    ours = predictor.predict_all(matrix)
    for target, booster in small_bundle.boosters.items():
        reference = small_bundle.latencies(
            target, booster.predict(xgb.DMatrix(matrix), output_margin=True), matrix
        )
        np.testing.assert_allclose(ours[target], reference, rtol=1e-6, atol=1e-4)
        assert ours[target].shape == (count,)


def test_predictions_are_never_negative(small_bundle: ModelBundle) -> None:
    """Latencies are clipped at zero even for rows far outside the training range."""
    matrix = np.zeros((3, len(FEATURE_NAMES)), dtype=np.float32)
    for values in Predictor(small_bundle, "cpu", nthread=1).predict_all(matrix).values():
        assert (values >= 0).all()


def test_nthread_does_not_change_results(small_bundle: ModelBundle) -> None:
    """One OpenMP thread and all cores predict the same numbers."""
    matrix = feature_matrix(rows(64))
    single = Predictor(small_bundle, "cpu", nthread=1).predict_all(matrix)
    every = Predictor(small_bundle, "cpu", nthread=0).predict_all(matrix)
    for target in single:
        np.testing.assert_allclose(single[target], every[target], rtol=1e-6)


def test_cpu_is_always_available() -> None:
    """PODLATENCY_DEVICE=cpu resolves to cpu without probing a GPU."""
    assert resolve_device("cpu") == "cpu"


@pytest.mark.skipif(cuda_usable(), reason="a GPU is present: the no-GPU error cannot be shown here")
def test_cuda_without_gpu_is_a_clear_error() -> None:
    """Asking for cuda where XGBoost sees no GPU fails at start-up, and auto falls back to cpu."""
    with pytest.raises(DeviceUnavailable):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_usable(), reason="no usable NVIDIA GPU on this machine")
def test_gpu_predictions_match_cpu(small_bundle: ModelBundle) -> None:
    """On a GPU, auto picks cuda and the predictions equal the CPU's within float tolerance."""
    assert resolve_device("auto") == "cuda"
    matrix = feature_matrix(rows(512))
    gpu = Predictor(small_bundle, "cuda", nthread=1).predict_all(matrix)
    cpu = Predictor(small_bundle, "cpu", nthread=1).predict_all(matrix)
    for target in cpu:
        np.testing.assert_allclose(gpu[target], cpu[target], rtol=1e-4, atol=1e-3)


def test_holder_reports_why_it_is_not_ready() -> None:
    """Before a model is swapped in, current() raises ModelNotReady with the recorded reason."""
    holder = ModelHolder()
    holder.mark_unavailable("corrupt bundle")
    with pytest.raises(Exception, match="corrupt bundle"):
        holder.current()
    assert not holder.ready


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_usable(), reason="no usable NVIDIA GPU on this machine")
def test_small_batches_stay_on_the_cpu(small_bundle: ModelBundle) -> None:
    """On cuda, calls below gpu_min_rows run on the CPU copy, bigger ones on the GPU; answers agree."""
    predictor = Predictor(small_bundle, "cuda", nthread=1, gpu_min_rows=64)
    assert (predictor.device_for(7), predictor.device_for(64)) == ("cpu", "cuda")
    cpu = Predictor(small_bundle, "cpu", nthread=1)
    for count in (7, 640):
        matrix = feature_matrix(rows(count))
        for target, values in predictor.predict_all(matrix).items():
            np.testing.assert_allclose(values, cpu.predict_all(matrix)[target], rtol=1e-4, atol=1e-3)


def test_cpu_predictor_never_uses_a_gpu(small_bundle: ModelBundle) -> None:
    """A cpu predictor runs every batch size on the CPU, whatever gpu_min_rows says."""
    predictor = Predictor(small_bundle, "cpu", nthread=1, gpu_min_rows=0)
    assert {predictor.device_for(rows) for rows in (1, 7, 4096)} == {"cpu"}
