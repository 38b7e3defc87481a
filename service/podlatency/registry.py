"""Model versions on disk and the pointer to the active one.

Layout under the model folder::

    bundles/<version>/...   one immutable bundle per version (see :mod:`podlatency.bundle`)
    ACTIVE                  the active version, replaced atomically

Writers stage a bundle and rename it into place, then replace ``ACTIVE``; a reader that races them
sees either the old version or the new one, never half of one.

Between machines a version travels as a *bundle archive*: an uncompressed tar of the bundle's files,
built byte for byte the same way every time (sorted members, zero times and owners), so its SHA-256
is a stable name for what a rollout declares and a predictor verifies.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from podlatency.bundle import ModelBundle, load_bundle
from podlatency.bundle_metadata import METADATA_FILE
from podlatency.errors import ModelLoadError

ACTIVE_FILE = "ACTIVE"
BUNDLES_DIR = "bundles"
MAX_ARCHIVE_BYTES = 256 * 1024 * 1024


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

    # -- archives: how a version travels between trainer and predictors ---------------------------

    def archive(self, version: str) -> bytes:
        """The bundle archive of a stored version (the same bytes on every call and machine)."""
        folder = self.bundle_dir(version)
        if not folder.is_dir():
            raise ModelLoadError(f"no stored model version {version!r} in {self.model_dir}")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for path in sorted(folder.iterdir()):
                content = path.read_bytes()
                member = tarfile.TarInfo(path.name)
                member.size, member.mode, member.mtime = len(content), 0o644, 0
                tar.addfile(member, io.BytesIO(content))
        return buffer.getvalue()

    def archive_sha256(self, version: str) -> str:
        """SHA-256 (hex) of a stored version's bundle archive."""
        return hashlib.sha256(self.archive(version)).hexdigest()

    def install_archive(self, version: str, archive: bytes, sha256: str) -> None:
        """Verify a downloaded archive and store it as ``version`` (not activated).

        Refused, with nothing stored, when the archive's SHA-256 is not ``sha256``, when it holds
        anything but plain bundle files, or when the bundle inside is not ``version``.
        """
        actual = hashlib.sha256(archive).hexdigest()
        if actual != sha256.lower():
            raise ModelLoadError(f"model {version}: archive sha256 is {actual}, declared {sha256}")
        root = self.model_dir / BUNDLES_DIR
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=root))
        try:
            _unpack_bundle(archive, staging, version)
            bundle = load_bundle(staging)
            if bundle.version != version:
                raise ModelLoadError(f"archive declared as {version} holds model {bundle.version}")
            try:
                staging.rename(self.bundle_dir(version))
            except OSError:
                if not (self.bundle_dir(version) / METADATA_FILE).exists():
                    raise
                shutil.rmtree(staging)  # the same content hash is already stored
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _unpack_bundle(archive: bytes, folder: Path, version: str) -> None:
    """Write an archive's members into ``folder``: plain files with plain names only."""
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            for member in tar.getmembers():
                name = member.name
                if not member.isfile() or "/" in name or name.startswith(".") or not name:
                    raise ModelLoadError(f"model {version}: archive member {name!r} is not a bundle file")
                extracted = tar.extractfile(member)
                if extracted is None:
                    raise ModelLoadError(f"model {version}: archive member {name!r} cannot be read")
                (folder / name).write_bytes(extracted.read())
    except tarfile.TarError as error:
        raise ModelLoadError(f"model {version}: not a bundle archive ({error})") from None
