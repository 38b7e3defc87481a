"""Bundles: saved without pickle, versioned by content, refused when damaged."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from podlatency.bundle import ModelBundle, load_bundle
from podlatency.engines.predictor import Predictor
from podlatency.errors import ModelLoadError
from podlatency.learning.training import TrainingOptions, synthetic_training_set, train_bundle
from podlatency.registry import ModelRegistry
from podlatency.schema import FEATURE_NAMES


def test_round_trip_keeps_version_and_predictions(tmp_path: Path, small_bundle: ModelBundle) -> None:
    """A saved and reloaded bundle has the same version and predicts the same numbers."""
    small_bundle.save(tmp_path / "b")
    loaded = load_bundle(tmp_path / "b")
    rows = synthetic_training_set(50, seed=3).by_target["ttft"].features
    assert loaded.version == small_bundle.version
    for target in ("ttft", "tpot"):
        np.testing.assert_array_equal(
            loaded.boosters[target].inplace_predict(rows), small_bundle.boosters[target].inplace_predict(rows)
        )
    assert sorted(path.name for path in (tmp_path / "b").iterdir()) == [
        "metadata.json",
        "tpot.ubj",
        "ttft.ubj",
    ]


def test_version_is_a_content_hash() -> None:
    """Training the same data twice gives the same version; other settings give another."""
    data = synthetic_training_set(2_000, seed=5)
    first = train_bundle(data, TrainingOptions(rounds=10), source="a")
    again = train_bundle(data, TrainingOptions(rounds=10), source="b")
    other = train_bundle(data, TrainingOptions(rounds=11), source="a")
    assert first.version == again.version
    assert first.version != other.version


@pytest.mark.parametrize("damage", ["truncate", "garbage", "metadata-version", "features", "missing"])
def test_damaged_bundles_are_refused(tmp_path: Path, small_bundle: ModelBundle, damage: str) -> None:
    """Truncated or foreign booster files, tampered metadata and missing files raise ModelLoadError."""
    folder = small_bundle.save(tmp_path / "b")
    booster_file = folder / "ttft.ubj"
    metadata_file = folder / "metadata.json"
    metadata = json.loads(metadata_file.read_text())
    if damage == "truncate":
        booster_file.write_bytes(booster_file.read_bytes()[:200])
    elif damage == "garbage":
        booster_file.write_bytes(b"\x80\x04not a model")
    elif damage == "metadata-version":
        metadata_file.write_text(json.dumps(metadata | {"version": "0000000000000000"}))
    elif damage == "features":
        metadata_file.write_text(json.dumps(metadata | {"feature_names": metadata["feature_names"][:-1]}))
    else:
        booster_file.unlink()
    with pytest.raises(ModelLoadError):
        load_bundle(folder)


def test_registry_activates_atomically(tmp_path: Path, small_bundle: ModelBundle) -> None:
    """Saving with activation points ACTIVE at the bundle; loading the active version returns it."""
    registry = ModelRegistry(tmp_path)
    assert registry.load_active() is None
    registry.save(small_bundle)
    assert registry.active_version() == small_bundle.version
    assert registry.versions() == [small_bundle.version]
    active = registry.load_active()
    assert active is not None
    assert active.version == small_bundle.version
    assert not list(tmp_path.rglob(".*")), "no staging files are left behind"


def test_activating_an_unknown_version_fails(tmp_path: Path) -> None:
    """Pointing ACTIVE at a version that is not stored is refused."""
    with pytest.raises(ModelLoadError):
        ModelRegistry(tmp_path).activate("feedfacecafebeef")
    assert not (tmp_path / "ACTIVE").exists()


def test_no_pickle_anywhere(tmp_path: Path, small_bundle: ModelBundle) -> None:
    """Bundle files are XGBoost UBJSON and JSON: no pickle protocol header in any of them."""
    folder = small_bundle.save(tmp_path / "b")
    for path in folder.iterdir():
        assert not path.read_bytes().startswith(b"\x80"), path
    shutil.rmtree(folder)


def test_archives_are_the_same_bytes_every_time(tmp_path: Path, small_bundle: ModelBundle) -> None:
    """A version's archive has one SHA-256 wherever it is built; installing it elsewhere reproduces it."""
    source = ModelRegistry(tmp_path / "a")
    source.save(small_bundle)
    archive = source.archive(small_bundle.version)
    assert archive == source.archive(small_bundle.version)
    target = ModelRegistry(tmp_path / "b")
    target.install_archive(small_bundle.version, archive, hashlib.sha256(archive).hexdigest())
    assert target.archive_sha256(small_bundle.version) == hashlib.sha256(archive).hexdigest()
    assert target.load(small_bundle.version).version == small_bundle.version
    assert target.active_version() is None, "installing does not activate"


def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in members.items():
            member = tarfile.TarInfo(name)
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content))
    return buffer.getvalue()


def test_bad_archives_are_refused_and_nothing_is_stored(tmp_path: Path, small_bundle: ModelBundle) -> None:
    """A wrong checksum, a path outside the bundle, or a bundle of another version store nothing."""
    source = ModelRegistry(tmp_path / "a")
    source.save(small_bundle)
    good = source.archive(small_bundle.version)
    target = ModelRegistry(tmp_path / "b")
    version = small_bundle.version
    with pytest.raises(ModelLoadError, match="sha256"):
        target.install_archive(version, good, "0" * 64)
    escaping = _tar({"../escaped": b"x"})
    with pytest.raises(ModelLoadError, match="not a bundle file"):
        target.install_archive(version, escaping, hashlib.sha256(escaping).hexdigest())
    assert not (tmp_path / "b" / "escaped").exists()
    with pytest.raises(ModelLoadError, match=f"holds model {version}"):
        target.install_archive("0123456789abcdef", good, hashlib.sha256(good).hexdigest())
    garbage = b"not a tar file at all" * 40
    with pytest.raises(ModelLoadError, match="not a bundle archive"):
        target.install_archive(version, garbage, hashlib.sha256(garbage).hexdigest())
    assert target.versions() == []


OLD_FEATURES = (*FEATURE_NAMES[:8], "pod_type_code", "uncached_input_tokens")
"""The features of bundles trained before the encoder features existed."""


def test_a_bundle_without_the_encoder_features_keeps_serving(tmp_path: Path) -> None:
    """A bundle trained on the ten older features loads, predicts from their columns only, and says so."""
    data = synthetic_training_set(2_000, seed=5).by_target
    columns = [FEATURE_NAMES.index(name) for name in OLD_FEATURES]
    boosters = {}
    for target, rows in data.items():
        booster = xgb.train(
            {"nthread": 1}, xgb.DMatrix(rows.features[:, columns], label=rows.observed_ms), 10
        )
        boosters[target] = booster
    old = ModelBundle.create(
        boosters, objective="mean", quantile_alpha=None, metrics={}, trained_at="", training_rows=2_000,
        source="older", feature_names=OLD_FEATURES,
    )  # fmt: skip
    old.save(tmp_path / "old")
    loaded = load_bundle(tmp_path / "old")
    assert loaded.version == old.version
    assert loaded.ignored_features() == [
        "encoder_input_size",
        "encoder_matched_size",
        "uncached_encoder_items",
    ]
    matrix = data["ttft"].features[:50]
    predicted = Predictor(loaded, "cpu", nthread=1).predict_all(matrix)
    expected = np.maximum(boosters["ttft"].inplace_predict(np.ascontiguousarray(matrix[:, columns])), 0)
    np.testing.assert_allclose(predicted["ttft"], expected, rtol=1e-6)
