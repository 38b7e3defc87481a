"""How a model comes to compiled trees (:class:`Compiler`), while XGBoost keeps serving it.

1. a child process at the lowest CPU priority (``python -m podlatency.compiler``) compiles each
   target's booster from the model folder's UBJSON, one compiler process at a time;
2. the libraries' SHA-256s go into a manifest beside them, in
   ``<compiled folder>/<version>/<platform>/``, so a restart and the pod's other worker processes
   load them instead of compiling again; a library whose hash differs is removed and compiled anew;
3. before serving, the compiled outputs must equal XGBoost's on a check matrix (random rows, zeros,
   the largest values, every split threshold) within float32 tolerance
   (:func:`podlatency.compiled.outputs_agree`);
4. the predictor switches with one attribute write: calls in flight finish on XGBoost.

Libraries never travel between machines: a bundle archive holds only UBJSON boosters and metadata,
and each process compiles (or finds its own compile of) the boosters it has verified. Without a
compiler, or when compiling fails or the outputs differ, XGBoost keeps serving and the reason is
logged once per model.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from podlatency.compiled import CompiledModel, outputs_agree, platform_key
from podlatency.errors import CompileFailed
from podlatency.metrics import service_metrics
from podlatency.processes import die_with_parent

if TYPE_CHECKING:
    from podlatency.predictor import Predictor

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
LIBRARY_SUFFIX = ".so"
# -O1 predicts as fast as -O2/-O3 at half their compile time (docs/performance.md).
COMPILER_OPTIONS = ("-O1",)
COMPILE_TIMEOUT_S = 900.0


class Compiler:
    """Brings each model in service to the compiled engine, in the background, one model at a time."""

    def __init__(self, folder: Path, compiler: str = "gcc") -> None:
        self.folder = folder
        self.compiler = compiler
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="podlatency-compile")
        self._child: subprocess.Popen[bytes] | None = None
        self._closed = False

    def library_folder(self, version: str) -> Path:
        """Where one version's libraries for this platform live."""
        return self.folder / version / platform_key()

    def start(self, predictor: Predictor, bundle_folder: Path) -> Future[str]:
        """Compile (or load) ``predictor``'s bundle and switch it over; the future gives the engine then."""
        return self._executor.submit(self._bring_up, predictor, bundle_folder)

    def close(self) -> None:
        """Stop a compile in progress (its child process and compilers) and take no more."""
        self._closed = True
        child = self._child
        if child is not None and child.poll() is None:
            os.killpg(child.pid, 9)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def prune(self, kept_versions: set[str]) -> None:
        """Remove the libraries of versions no longer stored."""
        if not self.folder.is_dir():
            return
        for stale in self.folder.iterdir():
            if stale.is_dir() and stale.name not in kept_versions and not stale.name.startswith("."):
                shutil.rmtree(stale, ignore_errors=True)

    def _bring_up(self, predictor: Predictor, bundle_folder: Path) -> str:
        version = predictor.bundle.version
        try:
            compiled, outcome = self.load_or_compile(predictor.bundle.boosters, version, bundle_folder)
        except CompileFailed as error:
            return self._stays_on_xgboost(predictor, "failed", error.detail)
        difference = outputs_agree(*predictor.compiled_and_xgboost(compiled))
        if difference is not None:
            shutil.rmtree(self.library_folder(version), ignore_errors=True)
            return self._stays_on_xgboost(predictor, "mismatch", difference)
        predictor.use_compiled(compiled)
        service_metrics().compiles.labels(outcome).inc()
        logger.info("model %s now predicts with compiled trees (%s)", version, outcome)
        return predictor.engine_for(1)

    @staticmethod
    def _stays_on_xgboost(predictor: Predictor, outcome: str, reason: str) -> str:
        service_metrics().compiles.labels(outcome).inc()
        logger.warning("model %s stays on XGBoost: %s", predictor.bundle.version, reason)
        return predictor.engine_for(1)

    def load_or_compile(
        self, boosters: Mapping[str, Any], version: str, bundle_folder: Path
    ) -> tuple[CompiledModel, str]:
        """The version's libraries: from the cache when their hashes hold, else freshly compiled."""
        folder = self.library_folder(version)
        with _exclusive(folder.parent / f".{folder.name}.lock"):
            libraries = self._cached(folder, boosters)
            outcome = "cached"
            if libraries is None:
                libraries = self._compile(boosters, bundle_folder, folder)
                outcome = "compiled"
        try:
            return CompiledModel(libraries), outcome
        except Exception as error:  # tl2cgen refuses a library it cannot load
            shutil.rmtree(folder, ignore_errors=True)
            raise CompileFailed(f"compiled library could not be loaded: {error}") from None

    def _cached(self, folder: Path, boosters: Mapping[str, Any]) -> dict[str, Path] | None:
        """The cached libraries when the manifest names every target and each hash matches."""
        try:
            manifest = json.loads((folder / MANIFEST_FILE).read_text())
            hashes: dict[str, str] = manifest["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        libraries = {target: folder / f"{target}{LIBRARY_SUFFIX}" for target in boosters}
        for target, path in libraries.items():
            if hashes.get(target) is None or not path.is_file() or _sha256(path) != hashes[target]:
                logger.warning("compiled library %s does not match its manifest: compiling again", path)
                shutil.rmtree(folder, ignore_errors=True)
                return None
        return libraries

    def _compile(self, boosters: Mapping[str, Any], bundle_folder: Path, folder: Path) -> dict[str, Path]:
        """Run the compile child at the lowest priority; write the libraries and their manifest."""
        if self._closed:
            raise CompileFailed("the process is stopping")
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        command = [
            sys.executable, "-m", "podlatency.compiler", "--bundle", str(bundle_folder),
            "--out", str(staging), "--compiler", self.compiler, "--targets", ",".join(boosters),
        ]  # fmt: skip
        started = time.monotonic()
        try:
            child = self._child = subprocess.Popen(  # noqa: S603  (our own module, fixed arguments)
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its compilers are stopped with it (close)
                preexec_fn=_compile_child_setup,  # noqa: PLW1509  (no lock is taken in between)
            )
            try:
                output, _ = child.communicate(timeout=COMPILE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, 9)
                raise CompileFailed(f"compiling took longer than {COMPILE_TIMEOUT_S:.0f} s") from None
            if child.returncode != 0:
                reason = output.decode(errors="replace").strip().splitlines()
                raise CompileFailed(f"compiling failed: {reason[-1] if reason else child.returncode}")
            libraries = {target: staging / f"{target}{LIBRARY_SUFFIX}" for target in boosters}
            seconds = round(time.monotonic() - started, 2)
            manifest = {
                "platform": platform_key(),
                "compiler": self.compiler,
                "options": list(COMPILER_OPTIONS),
                "compile_seconds": seconds,
                "sha256": {target: _sha256(path) for target, path in libraries.items()},
            }
            (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
            shutil.rmtree(folder, ignore_errors=True)
            staging.rename(folder)
        except OSError as error:  # the child could not start, or the folder is not writable
            raise CompileFailed(f"compiling failed: {error}") from None
        finally:
            self._child = None
            shutil.rmtree(staging, ignore_errors=True)
        service_metrics().compile_seconds.set(seconds)
        return {target: folder / f"{target}{LIBRARY_SUFFIX}" for target in boosters}


def _compile_child_setup() -> None:
    """In the compile child: the lowest CPU priority, and death with the process it compiles for."""
    os.nice(19)
    die_with_parent(signal.SIGKILL)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold a file lock: the pod's worker processes compile a version once, not once each."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- the compile child: python -m podlatency.compiler ------------------------------------------------


def compile_boosters(bundle_folder: Path, targets: list[str], out: Path, compiler: str) -> None:
    """Compile each target's UBJSON booster in ``bundle_folder`` to ``out/<target>.so``."""
    import tl2cgen  # noqa: PLC0415  (the compile child only)
    import treelite  # noqa: PLC0415
    import xgboost as xgb  # noqa: PLC0415

    for target in targets:
        booster = xgb.Booster(model_file=str(bundle_folder / f"{target}.ubj"))
        tl2cgen.export_lib(
            treelite.frontend.from_xgboost(booster),
            toolchain=compiler,
            libpath=out / f"{target}{LIBRARY_SUFFIX}",
            params={"parallel_comp": 1},
            nthread=1,
            options=list(COMPILER_OPTIONS),
        )


def main(argv: list[str] | None = None) -> int:
    """Compile a bundle's boosters (run by :class:`Compiler` as a low-priority child)."""
    parser = argparse.ArgumentParser(prog="python -m podlatency.compiler", description=main.__doc__)
    parser.add_argument("--bundle", type=Path, required=True, help="the bundle folder (UBJSON boosters)")
    parser.add_argument("--out", type=Path, required=True, help="folder for <target>.so")
    parser.add_argument("--compiler", default="gcc")
    parser.add_argument("--targets", required=True, help="comma-separated targets")
    args = parser.parse_args(argv)
    try:
        compile_boosters(args.bundle, args.targets.split(","), args.out, args.compiler)
    except Exception as error:
        print(f"{type(error).__name__}: {str(error).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
