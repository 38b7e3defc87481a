"""Following a trainer over HTTP, the trainer's answers read from a real model folder (no network)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from podlatency.bundle import ModelBundle
from podlatency.http_follow import HttpFollower
from podlatency.prediction_service import PredictionService
from podlatency.registry import ModelRegistry
from podlatency.settings import Settings


def test_a_tampered_download_is_refused_and_tried_again_after_the_backoff(
    tmp_path: Path, small_bundle: ModelBundle
) -> None:
    """A download whose SHA-256 is not the listed one is refused, and fetched again only after the backoff.

    Once it arrives intact it is stored, activated and served.
    """
    trainer = ModelRegistry(tmp_path / "trainer")
    version = trainer.save(small_bundle)
    fetched: list[str] = []
    tampering = True

    def listing(url: str) -> dict[str, Any]:
        assert url == "http://trainer:8000/v1/models"
        return {
            "active": version,
            "versions": [{"version": version, "archive_sha256": trainer.archive_sha256(version)}],
        }

    def fetch(url: str) -> bytes:
        fetched.append(url)
        archive = trainer.archive(version)
        return archive[:-1] + bytes([archive[-1] ^ 1]) if tampering else archive

    service = PredictionService(Settings(model_dir=tmp_path / "predictor", device="cpu", engine="xgboost"))
    follower = HttpFollower(
        service, "http://trainer:8000/", 0.1, read=listing, fetch=fetch, retry_failed_s=0.3
    )
    assert not follower.check_once()
    assert not follower.check_once()
    assert fetched == [f"http://trainer:8000/v1/models/{version}/bundle"], (
        "not fetched again within the backoff"
    )
    assert service.holder.current_or_none() is None
    assert version not in ModelRegistry(tmp_path / "predictor").versions()

    tampering = False
    time.sleep(0.35)
    assert follower.check_once()
    assert len(fetched) == 2
    assert service.holder.current().version == version
    assert ModelRegistry(tmp_path / "predictor").active_version() == version
