"""Model versions on disk and the pointer to the active one.

Layout under the model folder::

    bundles/<version>/...   one immutable bundle per version (see :mod:`podlatency.bundle`)
    ACTIVE                  the active version, replaced atomically

Writers stage a bundle and rename it into place, then replace ``ACTIVE``; a reader that races them
sees either the old version or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from podlatency.bundle import METADATA_FILE, ModelBundle, load_bundle
from podlatency.errors import ModelLoadError

ACTIVE_FILE = "ACTIVE"
BUNDLES_DIR = "bundles"


class ModelRegistry:
    """The model versions stored in one folder."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir

    def bundle_dir(self, version: str) -> Path:
        """Where the bundle of ``version`` lives."""
        return self.model_dir / BUNDLES_DIR / version

    def versions(self) -> list[str]:
        """Stored versions, oldest first."""
        root = self.model_dir / BUNDLES_DIR
        if not root.is_dir():
            return []
        folders = [path for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")]
        return [path.name for path in sorted(folders, key=lambda path: path.stat().st_mtime)]

    def active_version(self) -> str | None:
        """The version ``ACTIVE`` names, or ``None`` when no model was ever activated."""
        try:
            version = (self.model_dir / ACTIVE_FILE).read_text().strip()
        except FileNotFoundError:
            return None
        return version or None

    def save(self, bundle: ModelBundle, *, activate: bool = True) -> str:
        """Store ``bundle`` (idempotent for a version already there) and optionally make it active."""
        bundle.save(self.bundle_dir(bundle.version))
        if activate:
            self.activate(bundle.version)
        return bundle.version

    def activate(self, version: str) -> None:
        """Point ``ACTIVE`` at a stored version."""
        if not self.bundle_dir(version).is_dir():
            raise ModelLoadError(f"no stored model version {version!r} in {self.model_dir}")
        self.model_dir.mkdir(parents=True, exist_ok=True)
        descriptor, staging = tempfile.mkstemp(prefix=".ACTIVE-", dir=self.model_dir)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(version + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        Path(staging).replace(self.model_dir / ACTIVE_FILE)

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` versions (never the active one); returns those deleted."""
        active = self.active_version()
        removable = [version for version in self.versions() if version != active]
        doomed = removable[: max(0, len(removable) - (keep - 1 if active else keep))]
        for version in doomed:
            shutil.rmtree(self.bundle_dir(version), ignore_errors=True)
        return doomed

    def metadata(self, version: str) -> dict[str, object]:
        """A stored version's metadata, read without loading its boosters."""
        try:
            metadata: dict[str, object] = json.loads((self.bundle_dir(version) / METADATA_FILE).read_text())
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"{self.bundle_dir(version)}: unreadable metadata ({error})") from None
        return metadata

    def booster_file(self, version: str, target: str) -> Path:
        """Where one target's booster of a stored version lives."""
        return self.bundle_dir(version) / f"{target}.ubj"

    def load(self, version: str) -> ModelBundle:
        """Load and verify one stored version."""
        folder = self.bundle_dir(version)
        if not folder.is_dir():
            raise ModelLoadError(f"no stored model version {version!r} in {self.model_dir}")
        return load_bundle(folder)

    def load_active(self) -> ModelBundle | None:
        """The active bundle, ``None`` when there is none yet."""
        version = self.active_version()
        return None if version is None else self.load(version)
