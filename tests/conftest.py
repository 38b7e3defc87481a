"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from podlatency.bundle import ModelBundle
from podlatency.learning.training import TrainingOptions, synthetic_training_set, train_bundle
from podlatency.registry import ModelRegistry


@pytest.fixture(scope="session")
def small_bundle() -> ModelBundle:
    """A quickly trained bundle (50 rounds on 5,000 synthetic rows)."""
    return train_bundle(synthetic_training_set(5_000, seed=1), TrainingOptions(rounds=50), source="test")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, small_bundle: ModelBundle) -> Path:
    """A model folder whose active version is ``small_bundle``; tests must not modify it."""
    folder = tmp_path_factory.mktemp("models")
    ModelRegistry(folder).save(small_bundle)
    return folder
