"""Bundles: saved without pickle, versioned by content, refused when damaged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from podlatency.bundle import ModelBundle, load_bundle
from podlatency.errors import ModelLoadError
from podlatency.registry import ModelRegistry
from podlatency.training import TrainingOptions, synthetic_training_set, train_bundle


def test_round_trip_keeps_version_and_predictions(tmp_path: Path, small_bundle: ModelBundle) -> None:
    """A saved and reloaded bundle has the same version and predicts the same numbers."""
    small_bundle.save(tmp_path / "b")
    loaded = load_bundle(tmp_path / "b")
    rows = synthetic_training_set(50, seed=3).features
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
