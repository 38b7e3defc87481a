"""Compiled trees (treelite + tl2cgen + gcc, for real): XGBoost's outputs, cached, checked or refused."""

from __future__ import annotations

import functools
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from measure.load_order import monotone_violations
from podlatency.bundle import ModelBundle
from podlatency.engines.compiled import (
    ENGINE_COMPILED,
    ENGINE_XGBOOST,
    HELD_GIL_MAX_ROWS,
    CompiledModel,
    check_matrix,
    outputs_agree,
)
from podlatency.engines.compiling import BUILD_OPTIONS, MANIFEST_FILE, Compiler, export_library
from podlatency.engines.flat_trees import EVALUATOR_LIBRARY, FlatTree, FlatTrees
from podlatency.engines.predictor import Predictor
from podlatency.errors import CompileFailed
from podlatency.learning import workload
from podlatency.learning.training import TrainingOptions, synthetic_training_set, train_bundle
from podlatency.metrics import service_metrics
from podlatency.registry import ModelRegistry
from podlatency.schema import FEATURE_NAMES, MAX_COUNT, TARGETS
from tests.unit.feature_rows import rows_at_every_bound


@pytest.fixture(scope="module")
def quantile_bundle() -> ModelBundle:
    options = TrainingOptions(rounds=40, objective="quantile", quantile_alpha=0.9)
    return train_bundle(synthetic_training_set(4_000, seed=5), options, source="test")


@pytest.fixture(scope="module")
def quantile_set_bundle() -> ModelBundle:
    options = TrainingOptions(
        rounds=40, objective="quantile", quantile_alpha=0.9, quantiles=(0.5, 0.95, 0.99)
    )
    return train_bundle(synthetic_training_set(4_000, seed=5), options, source="test")


def stored(bundle: ModelBundle, folder: Path) -> Path:
    registry = ModelRegistry(folder)
    registry.save(bundle)
    return registry.bundle_dir(bundle.version)


def served(predictor: Predictor, target: str, output: int | None, rows: np.ndarray) -> np.ndarray:
    """One target's served predictions at one output (the compiled engine, once in use)."""
    values = predictor.predict_timed(rows)[0][target]
    return values if output is None else values[:, output]


@pytest.mark.parametrize("model", ["mean", "quantile", "quantile set"])
def test_compiled_predictions_equal_xgboost_at_every_bound(
    model: str,
    small_bundle: ModelBundle,
    quantile_bundle: ModelBundle,
    quantile_set_bundle: ModelBundle,
    tmp_path: Path,
) -> None:
    """Both objectives and a quantile set: compiled outputs equal XGBoost's within float32 tolerance.

    On random rows, each feature at its bounds and every split threshold; served predictions (load
    trend, logs, scale, clipping, sorting) agree the same way for every quantile, and stay monotone
    in load.
    """
    bundle = {"mean": small_bundle, "quantile": quantile_bundle, "quantile set": quantile_set_bundle}[model]
    compiler = Compiler(tmp_path / "compiled")
    predictor = Predictor(bundle, "cpu", nthread=1)
    compiled, outcome = compiler.load_or_compile(bundle.boosters, bundle.version, stored(bundle, tmp_path))
    assert outcome == "compiled"
    assert outputs_agree(*predictor.compiled_and_xgboost(compiled)) is None
    # Calls that keep the GIL, a router's 7 rows among them, as well as the one big call above.
    assert outputs_agree(*predictor.compiled_and_xgboost(compiled, rows_per_call=HELD_GIL_MAX_ROWS)) is None
    assert outputs_agree(*predictor.compiled_and_xgboost(compiled, rows_per_call=7)) is None

    matrix = rows_at_every_bound()
    on_xgboost = predictor.predict_timed(matrix)[0]
    predictor.use_compiled(compiled)
    assert predictor.engine_for(7) == ENGINE_COMPILED
    on_compiled = predictor.predict_timed(matrix)[0]
    for target in bundle.boosters:
        assert on_compiled[target].shape == (
            len(matrix),
            *([len(bundle.quantiles)] if model == "quantile set" else []),
        )
        np.testing.assert_allclose(on_compiled[target], on_xgboost[target], rtol=1e-5, atol=1e-3)
    # Monotone in load on the compiled engine too, at every quantile (test_load_order.py for XGBoost).
    pods = workload.generate(200, seed=22).features
    outputs: list[int | None] = list(range(len(bundle.quantiles))) if model == "quantile set" else [None]
    for output in outputs:
        compiled_predict = {
            target: functools.partial(served, predictor, target, output) for target in TARGETS
        }
        assert monotone_violations(compiled_predict, pods) == dict.fromkeys(TARGETS, 0), output
    compiler.close()


def test_the_check_matrix_holds_zeros_the_largest_values_and_thresholds(small_bundle: ModelBundle) -> None:
    matrix = check_matrix(small_bundle.boosters, None)
    assert matrix.dtype == np.float32
    assert matrix.flags["C_CONTIGUOUS"]
    assert (matrix == 0).all(axis=1).any(), "a row of zeros"
    assert matrix[:, FEATURE_NAMES.index("input_token_length")].max() == MAX_COUNT
    assert len(matrix) > 514, "threshold rows follow the random ones"


def test_a_restart_reuses_the_cache_and_a_tampered_or_otherwise_built_library_is_compiled_again(
    small_bundle: ModelBundle, tmp_path: Path
) -> None:
    bundle_folder = stored(small_bundle, tmp_path)
    folder = tmp_path / "compiled"
    first = Compiler(folder)
    _, outcome = first.load_or_compile(small_bundle.boosters, small_bundle.version, bundle_folder)
    assert outcome == "compiled"
    library = first.library_folder(small_bundle.version) / "ttft.so"
    assert (library.parent / MANIFEST_FILE).is_file()
    assert EVALUATOR_LIBRARY in json.loads((library.parent / MANIFEST_FILE).read_text())["sha256"]

    _, outcome = Compiler(folder).load_or_compile(small_bundle.boosters, small_bundle.version, bundle_folder)
    assert outcome == "cached", "a restarted process loads what was compiled"

    # Replaced, as a copy or an attacker would; rewriting it in place would also corrupt the copy
    # this process has loaded.
    tampered = library.read_bytes() + b"tampered"
    library.unlink()
    library.write_bytes(tampered)
    again = Compiler(folder)
    compiled, outcome = again.load_or_compile(small_bundle.boosters, small_bundle.version, bundle_folder)
    assert outcome == "compiled", "a library whose hash differs from its manifest is not loaded"
    assert not library.read_bytes().endswith(b"tampered")
    assert outputs_agree(*Predictor(small_bundle, "cpu", 1).compiled_and_xgboost(compiled)) is None

    # A cache from a release that built its libraries otherwise is built again.
    manifest_file = library.parent / MANIFEST_FILE
    manifest = json.loads(manifest_file.read_text())
    assert manifest["options"] == BUILD_OPTIONS.describe()
    manifest_file.write_text(json.dumps(manifest | {"options": {"gcc": ["-O3"], "quantize": False}}))
    _, outcome = Compiler(folder).load_or_compile(small_bundle.boosters, small_bundle.version, bundle_folder)
    assert outcome == "compiled"
    assert json.loads(manifest_file.read_text())["options"] == BUILD_OPTIONS.describe()


def test_without_a_compiler_xgboost_keeps_serving(small_bundle: ModelBundle, tmp_path: Path) -> None:
    compiler = Compiler(tmp_path / "compiled", compiler="podlatency-no-such-compiler")
    predictor = Predictor(small_bundle, "cpu", nthread=1)
    with pytest.raises(CompileFailed, match="compiling failed"):
        compiler.load_or_compile(small_bundle.boosters, small_bundle.version, stored(small_bundle, tmp_path))
    engine = compiler.start(predictor, stored(small_bundle, tmp_path)).result(timeout=120)
    assert engine == ENGINE_XGBOOST == predictor.engine_for(7)
    assert predictor.predict_all(rows_at_every_bound())["ttft"].shape == (64 + 2 * 11,)


def test_a_library_that_predicts_otherwise_is_refused(
    small_bundle: ModelBundle, quantile_bundle: ModelBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached library with a valid manifest but another model's trees: the check refuses it.

    tl2cgen's libraries serve a model whose trees flat arrays cannot hold (here: deeper than allowed);
    flat trees are built from the model's own boosters at load, so no cache can swap them.
    """
    monkeypatch.setattr("podlatency.engines.flat_trees.MAX_DEPTH", 3)
    folder = tmp_path / "compiled"
    compiler = Compiler(folder)
    quantile_folder = stored(quantile_bundle, tmp_path)
    compiler.load_or_compile(quantile_bundle.boosters, quantile_bundle.version, quantile_folder)
    impostor = compiler.library_folder(small_bundle.version)
    impostor.parent.mkdir(parents=True)
    shutil.copytree(compiler.library_folder(quantile_bundle.version), impostor)

    predictor = Predictor(small_bundle, "cpu", nthread=1)
    engine = compiler.start(predictor, stored(small_bundle, tmp_path)).result(timeout=120)
    assert engine == ENGINE_XGBOOST, "outputs that differ from XGBoost's are never served"
    assert not impostor.exists(), "and the library is removed, so the next start compiles afresh"


def test_a_model_replaced_mid_compile_stops_its_compile(
    small_bundle: ModelBundle, quantile_bundle: ModelBundle, tmp_path: Path
) -> None:
    """A rollout replaces a model while its trees compile: that compile stops and the new one goes on."""
    compiler = Compiler(tmp_path / "compiled")
    superseded = service_metrics().compiles.labels("superseded")
    before = superseded._value.get()
    replaced = compiler.start(Predictor(quantile_bundle, "cpu", 1), stored(quantile_bundle, tmp_path))
    version_folder = compiler.library_folder(quantile_bundle.version).parent
    deadline = time.monotonic() + 60
    while not any(entry.name.startswith(".") and entry.is_dir() for entry in version_folder.glob(".*")):
        assert time.monotonic() < deadline, "the first compile never started"
        time.sleep(0.01)  # its staging folder is made just before the compile child starts

    current = Predictor(small_bundle, "cpu", 1)
    started = time.monotonic()
    switched = compiler.start(current, stored(small_bundle, tmp_path))
    assert replaced.result(timeout=60) == ENGINE_XGBOOST
    assert time.monotonic() - started < 5, "the replaced model's compile was stopped, not waited for"
    assert switched.result(timeout=300) == ENGINE_COMPILED == current.engine_for(7)
    assert superseded._value.get() == before + 1
    assert not compiler.library_folder(quantile_bundle.version).exists()
    assert not [entry for entry in version_folder.glob(".*") if entry.is_dir()], "no staging folder is left"
    compiler.close()


def test_the_check_catches_quantized_trees_that_split_one_float32_step_off(tmp_path: Path) -> None:
    """Why compiled trees are not quantized: the check refuses it for this model.

    With tl2cgen's ``quantize`` this model's TTFT trees (fitted on milliseconds, without constraints)
    put a value one float32 step below a split threshold on the wrong side. Only the check matrix's
    rows beside each threshold show it; the plain build agrees everywhere.
    """
    fitted_on_ms = TrainingOptions(rounds=50, log_latency=False, monotone=False, load_trend=False)
    booster = train_bundle(synthetic_training_set(5_000, seed=1), fitted_on_ms, source="test").boosters[
        "ttft"
    ]
    matrix = check_matrix({"ttft": booster}, None)
    expected = np.asarray(booster.inplace_predict(matrix, validate_features=False, predict_type="margin"))
    disagreeing = {}
    for name, options in {"plain": BUILD_OPTIONS, "quantized": replace(BUILD_OPTIONS, quantize=True)}.items():
        export_library(booster, tmp_path / f"{name}.so", "gcc", options)
        outputs, _ = CompiledModel({"ttft": tmp_path / f"{name}.so"}).predict_timed(matrix)
        disagreeing[name] = outputs_agree(outputs, {"ttft": expected})
    assert disagreeing["plain"] is None
    assert disagreeing["quantized"] is not None
    random_rows = 514
    assert int(disagreeing["quantized"].split("row ")[1].split(":")[0]) >= random_rows


def test_a_booster_with_a_quantile_set_compiles_to_one_value_per_row_and_quantile(tmp_path: Path) -> None:
    """A booster whose leaves carry several quantiles compiles; both call paths give XGBoost's margins.

    The check matrix reads its vector-leaf trees' thresholds; a few rows go through the binding that
    keeps the GIL, the check matrix's hundreds through tl2cgen's Python API; each gives
    ``(rows, quantiles)``, equal to XGBoost's within float32 tolerance.
    """
    data = synthetic_training_set(3_000, seed=4).by_target["ttft"]
    params = {
        "tree_method": "hist", "max_depth": 4, "eta": 0.3, "nthread": 1, "seed": 0,
        "objective": "reg:quantileerror", "quantile_alpha": np.array([0.5, 0.9, 0.99]),
        "multi_strategy": "multi_output_tree", "base_score": 4.0,  # one intercept: tl2cgen takes one
    }  # fmt: skip
    booster = xgb.train(params, xgb.DMatrix(data.features, label=np.log(data.observed_ms)), 20)
    export_library(booster, tmp_path / "quantiles.so", "gcc", BUILD_OPTIONS)
    compiled = CompiledModel({"ttft": tmp_path / "quantiles.so"})
    for rows in (check_matrix({"ttft": booster}, None), np.ascontiguousarray(data.features[:7])):
        outputs, _ = compiled.predict_timed(rows)
        expected = booster.inplace_predict(rows, predict_type="margin")
        assert outputs["ttft"].shape == (len(rows), 3)
        assert outputs_agree(outputs, {"ttft": np.asarray(expected, dtype=np.float32)}) is None


def test_flat_trees_walk_as_xgboost_and_stand_aside_for_trees_they_cannot_hold(
    small_bundle: ModelBundle,
    quantile_set_bundle: ModelBundle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Scalar and vector leaves give XGBoost's margins for any number of rows; too deep a model gets none."""
    compiler = Compiler(tmp_path / "compiled")
    compiler.load_or_compile(small_bundle.boosters, small_bundle.version, stored(small_bundle, tmp_path))
    evaluator = compiler.library_folder(small_bundle.version) / EVALUATOR_LIBRARY
    rows = workload.generate(300, seed=5).features.astype(np.float32)
    for bundle in (small_bundle, quantile_set_bundle):
        flat = FlatTrees.load(evaluator, bundle.boosters)
        assert flat is not None
        for target, booster in bundle.boosters.items():
            for count in (1, 7, 17, 300):  # a lone row, a request, past one chunk of rows, a batch
                part = np.ascontiguousarray(rows[:count])
                expected = booster.inplace_predict(part, predict_type="margin")
                expected = np.asarray(expected).reshape(flat.outputs(target, part).shape)
                np.testing.assert_allclose(flat.outputs(target, part), expected, rtol=1e-5, atol=1e-3)
                released = flat.outputs(target, part, keep_gil=False)
                np.testing.assert_array_equal(released, flat.outputs(target, part))
            # A row's outputs do not depend on the rest of its call: alone or batched, the same bits.
            alone = np.concatenate([flat.outputs(target, rows[i : i + 1]) for i in range(20)])
            np.testing.assert_array_equal(alone, flat.outputs(target, rows[:20]))
    # A tree per output (XGBoost's other multi-output strategy) is left to tl2cgen.
    per_output = xgb.train(
        {
            "objective": "reg:quantileerror",
            "quantile_alpha": [0.5, 0.9],
            "tree_method": "hist",
            "max_depth": 3,
        },
        xgb.DMatrix(rows[:200], label=rows[:200, 1]),
        num_boost_round=3,
    )
    assert FlatTree.of(per_output) is None
    monkeypatch.setattr("podlatency.engines.flat_trees.MAX_DEPTH", 3)
    assert FlatTree.of(small_bundle.boosters["ttft"]) is None
    assert FlatTrees.load(evaluator, small_bundle.boosters) is None
    compiler.close()
