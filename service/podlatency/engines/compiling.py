"""How a model comes to compiled trees (:class:`Compiler`), while XGBoost keeps serving it.

1. a child process at the lowest CPU priority (``python -m podlatency.engines.compiling``) compiles each
   target's booster from the model folder's UBJSON, one compiler process at a time;
2. the libraries' SHA-256s go into a manifest beside them, in
   ``<compiled folder>/<version>/<platform>/``, so a restart and the pod's other worker processes
   load them instead of compiling again; a library whose hash differs, or that was built with other
   options (:data:`BUILD_OPTIONS`), is removed and compiled anew;
3. before serving, the compiled outputs must equal XGBoost's on a check matrix (random rows, zeros,
   the largest values, every split threshold) within float32 tolerance
   (:func:`podlatency.engines.compiled.outputs_agree`);
4. the predictor switches with one attribute write: calls in flight finish on XGBoost.

Libraries never travel between machines: a bundle archive holds only UBJSON boosters and metadata,
and each process compiles (or finds its own compile of) the boosters it has verified. Without a
compiler, or when compiling fails or the outputs differ, XGBoost keeps serving and the reason is
logged once per model.
"""

from __future__ import annotations

import argparse
import contextlib
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
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from podlatency.engines.compiled import HELD_GIL_MAX_ROWS, CompiledModel, outputs_agree, platform_key
from podlatency.engines.flat_trees import EVALUATOR_LIBRARY, FlatTrees, build_evaluator
from podlatency.errors import CompileFailed, CompileSuperseded
from podlatency.metrics import service_metrics
from podlatency.processes import die_with_parent

if TYPE_CHECKING:
    import xgboost as xgb

    from podlatency.engines.predictor import Predictor

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
LIBRARY_SUFFIX = ".so"


@dataclass(frozen=True)
class BuildOptions:
    """How a booster becomes a library: gcc's options, and tl2cgen's ``quantize`` and parallelism.

    The defaults are what ``python -m measure.compile_options`` measured (docs/performance.md):
    ``-Os`` predicts fastest of gcc's levels with the model's code cold, as a server's requests find
    it, for about 1.4x the compile CPU of ``-O1``. ``quantize`` (integer comparisons) is faster still
    but predicts a value one float32 step below a split threshold on the wrong side for some models,
    so the check against XGBoost refuses it.
    """

    gcc: tuple[str, ...] = ("-Os",)
    quantize: bool = False
    translation_units: int = 1
    compiler_processes: int = 1

    def describe(self) -> dict[str, Any]:
        """What a manifest records, so that a cache built otherwise is built again."""
        return {"gcc": list(self.gcc), "quantize": self.quantize, "flat_trees": True}


BUILD_OPTIONS = BuildOptions()
COMPILE_TIMEOUT_S = 900.0


class Compiler:
    """Brings each model in service to the compiled engine, in the background, one model at a time."""

    def __init__(self, folder: Path, compiler: str = "gcc") -> None:
        self.folder = folder
        self.compiler = compiler
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="podlatency-compile")
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._child_version: str | None = None
        self._wanted_version: str | None = None
        self._closed = False

    def library_folder(self, version: str) -> Path:
        """Where one version's libraries for this platform live."""
        return self.folder / version / platform_key()

    def start(self, predictor: Predictor, bundle_folder: Path) -> Future[str]:
        """Compile (or load) ``predictor``'s bundle and switch it over; the future gives the engine then.

        Only the model started last is wanted: a compile for another version, running or waiting,
        is stopped (outcome ``superseded``), so a rollout that replaces a model mid-compile does not
        wait for trees nobody will serve.
        """
        with self._lock:
            self._wanted_version = predictor.bundle.version
            if self._child_version is not None and self._superseded(self._child_version):
                self._kill_child()
        return self._executor.submit(self._bring_up, predictor, bundle_folder)

    def close(self) -> None:
        """Stop a compile in progress (its child process and compilers) and take no more."""
        with self._lock:
            self._closed = True
            self._kill_child()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _superseded(self, version: str) -> bool:
        """Whether a later :meth:`start` wants another model than ``version``."""
        return self._wanted_version not in (None, version)

    def _kill_child(self) -> None:
        """Kill the compile child and its compilers (the caller holds the lock)."""
        child = self._child
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it has just exited
                os.killpg(child.pid, signal.SIGKILL)

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
            if self._superseded(version):
                raise CompileSuperseded(f"model {self._wanted_version} replaced it")
            compiled, outcome = self.load_or_compile(predictor.bundle.boosters, version, bundle_folder)
        except CompileSuperseded as error:
            service_metrics().compiles.labels("superseded").inc()
            logger.info("model %s is not compiled: %s", version, error.detail)
            return predictor.engine_for(1)
        except CompileFailed as error:
            return self._stays_on_xgboost(predictor, "failed", error.detail)
        difference = outputs_agree(*predictor.compiled_and_xgboost(compiled)) or outputs_agree(
            *predictor.compiled_and_xgboost(compiled, rows_per_call=HELD_GIL_MAX_ROWS)
        )
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
        self, boosters: Mapping[str, xgb.Booster], version: str, bundle_folder: Path
    ) -> tuple[CompiledModel, str]:
        """The version's libraries: from the cache when their hashes hold, else freshly compiled."""
        folder = self.library_folder(version)
        with _exclusive(folder.parent / f".{folder.name}.lock"):
            libraries = self._cached(folder, boosters)
            outcome = "cached"
            if libraries is None:
                libraries = self._compile(boosters, version, bundle_folder, folder)
                outcome = "compiled"
        try:
            return CompiledModel(libraries, FlatTrees.load(folder / EVALUATOR_LIBRARY, boosters)), outcome
        except Exception as error:  # tl2cgen refuses a library it cannot load
            shutil.rmtree(folder, ignore_errors=True)
            raise CompileFailed(f"compiled library could not be loaded: {error}") from None

    def _cached(self, folder: Path, boosters: Mapping[str, xgb.Booster]) -> dict[str, Path] | None:
        """The cached libraries when the manifest names every target and each hash matches."""
        try:
            manifest = json.loads((folder / MANIFEST_FILE).read_text())
            hashes: dict[str, str] = manifest["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if manifest.get("options") != BUILD_OPTIONS.describe():
            logger.info("compiled libraries in %s were built with other options: compiling again", folder)
            return None
        libraries = _built_files(folder, boosters)
        for target, path in libraries.items():
            if hashes.get(target) is None or not path.is_file() or _sha256(path) != hashes[target]:
                logger.warning("compiled library %s does not match its manifest: compiling again", path)
                shutil.rmtree(folder, ignore_errors=True)
                return None
        return {target: libraries[target] for target in boosters}

    def _compile(
        self, boosters: Mapping[str, xgb.Booster], version: str, bundle_folder: Path, folder: Path
    ) -> dict[str, Path]:
        """Run the compile child at the lowest priority; write the libraries and their manifest."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        command = [
            sys.executable, "-m", "podlatency.engines.compiling", "--bundle", str(bundle_folder),
            "--out", str(staging), "--compiler", self.compiler, "--targets", ",".join(boosters),
        ]  # fmt: skip
        started = time.monotonic()
        try:
            child = self._start_child(command, version)
            try:
                output, _ = child.communicate(timeout=COMPILE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                raise CompileFailed(f"compiling took longer than {COMPILE_TIMEOUT_S:.0f} s") from None
            if child.returncode != 0:
                if self._superseded(version):  # start() killed it; a finished compile is kept
                    raise CompileSuperseded(f"model {self._wanted_version} replaced it while it compiled")
                reason = output.decode(errors="replace").strip().splitlines()
                raise CompileFailed(f"compiling failed: {reason[-1] if reason else child.returncode}")
            libraries = _built_files(staging, boosters)
            seconds = round(time.monotonic() - started, 2)
            manifest = {
                "platform": platform_key(),
                "compiler": self.compiler,
                "options": BUILD_OPTIONS.describe(),
                "compile_seconds": seconds,
                "sha256": {target: _sha256(path) for target, path in libraries.items()},
            }
            (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
            shutil.rmtree(folder, ignore_errors=True)
            staging.rename(folder)
        except OSError as error:  # the child could not start, or the folder is not writable
            raise CompileFailed(f"compiling failed: {error}") from None
        finally:
            with self._lock:
                self._child = self._child_version = None
            shutil.rmtree(staging, ignore_errors=True)
        service_metrics().compile_seconds.set(seconds)
        return {target: folder / f"{target}{LIBRARY_SUFFIX}" for target in boosters}

    def _start_child(self, command: list[str], version: str) -> subprocess.Popen[bytes]:
        """Start the compile child for ``version``, unless the process stops or wants another model."""
        with self._lock:
            if self._closed:
                raise CompileFailed("the process is stopping")
            if self._superseded(version):
                raise CompileSuperseded(f"model {self._wanted_version} replaced it")
            self._child = subprocess.Popen(  # noqa: S603  (our own module, fixed arguments)
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its compilers are stopped with it (close, start)
                preexec_fn=_compile_child_setup,  # noqa: PLW1509  (no lock is taken in between)
            )
            self._child_version = version
            return self._child


def _built_files(folder: Path, boosters: Mapping[str, xgb.Booster]) -> dict[str, Path]:
    """What a compile writes, by its manifest key: each target's library, and the flat-trees evaluator."""
    built = {target: folder / f"{target}{LIBRARY_SUFFIX}" for target in boosters}
    return built | {EVALUATOR_LIBRARY: folder / EVALUATOR_LIBRARY}


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


# -- the compile child: python -m podlatency.engines.compiling -----------------------------------------


def compile_boosters(bundle_folder: Path, targets: list[str], out: Path, compiler: str) -> None:
    """Compile each target's UBJSON booster in ``bundle_folder`` to ``out/<target>.so``, and the evaluator."""
    import xgboost as xgb  # noqa: PLC0415  (the compile child only)

    for target in targets:
        booster = xgb.Booster(model_file=str(bundle_folder / f"{target}.ubj"))
        export_library(booster, out / f"{target}{LIBRARY_SUFFIX}", compiler, BUILD_OPTIONS)
    build_evaluator(out / EVALUATOR_LIBRARY, compiler)


def export_library(booster: xgb.Booster, library: Path, compiler: str, options: BuildOptions) -> None:
    """Compile one XGBoost booster to the shared library ``library`` (treelite + tl2cgen)."""
    import tl2cgen  # noqa: PLC0415  (the compile child, and the compile-options benchmark)
    import treelite  # noqa: PLC0415

    tl2cgen.export_lib(
        treelite.frontend.from_xgboost(booster),
        toolchain=compiler,
        libpath=library,
        params={"parallel_comp": options.translation_units, "quantize": int(options.quantize)},
        nthread=options.compiler_processes,
        options=list(options.gcc),
    )


def main(argv: list[str] | None = None) -> int:
    """Compile a bundle's boosters (run by :class:`Compiler` as a low-priority child)."""
    parser = argparse.ArgumentParser(prog="python -m podlatency.engines.compiling", description=main.__doc__)
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
