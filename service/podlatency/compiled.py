"""Compiled trees: each target's booster as native code (treelite + tl2cgen), for calls on the CPU.

Why it is faster for a router's few rows: XGBoost's ``inplace_predict`` is a general tree walker.
Each call checks its input, sets up its thread pool and output, then walks node arrays whose splits
are data. tl2cgen writes each tree as nested ``if``s with the thresholds as constants, and gcc turns
them into straight-line branches. So a 7-row call costs microseconds instead of a fraction of a
millisecond (docs/performance.md measures both).

How a model comes to the compiled engine (:class:`Compiler`), while XGBoost keeps serving:

1. a child process at the lowest CPU priority (``python -m podlatency.compiled``) compiles each
   target's booster from the model folder's UBJSON, one compiler process at a time;
2. the libraries' SHA-256s go into a manifest beside them, in
   ``<compiled folder>/<version>/<platform>/``, so a restart and the pod's other worker processes
   load them instead of compiling again; a library whose hash differs is removed and compiled anew;
3. before serving, the compiled outputs must equal XGBoost's on a check matrix (random and real rows,
   zeros, the largest counts, every split threshold) within float32 tolerance;
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
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from podlatency.errors import CompileFailed
from podlatency.metrics import service_metrics
from podlatency.schema import FEATURE_NAMES, MAX_COUNT, POD_TYPE_CODES, add_derived_columns

if TYPE_CHECKING:
    from podlatency.predictor import Predictor

logger = logging.getLogger(__name__)

ENGINE_COMPILED = "compiled"
ENGINE_XGBOOST = "xgboost"
ENGINE_XGBOOST_GPU = "xgboost-gpu"

MANIFEST_FILE = "manifest.json"
LIBRARY_SUFFIX = ".so"
# -O1 predicts as fast as -O2/-O3 at half their compile time (docs/performance.md).
COMPILER_OPTIONS = ("-O1",)
COMPILE_TIMEOUT_S = 900.0
# Float32 sums of the same leaves in another order: |compiled - xgboost| <= ABS + REL * |xgboost|.
ABSOLUTE_TOLERANCE = 1e-3
RELATIVE_TOLERANCE = 1e-5

FloatMatrix = npt.NDArray[np.float32]


def platform_key() -> str:
    """What a compiled library is only valid for: OS, CPU architecture and the tl2cgen runtime."""
    return f"{sys.platform}-{platform.machine()}-tl2cgen{importlib.metadata.version('tl2cgen')}"


class CompiledModel:
    """One bundle's boosters as loaded native libraries: raw (unscaled) predictions per target."""

    def __init__(self, libraries: Mapping[str, Path]) -> None:
        import tl2cgen  # noqa: PLC0415  (only where a compiled model is loaded)

        self._dmatrix = tl2cgen.DMatrix
        self._predictors = {
            target: tl2cgen.Predictor(str(path), nthread=1) for target, path in libraries.items()
        }
        # tl2cgen allows one predict call at a time per library; the batcher makes one at a time anyway.
        self._lock = threading.Lock()

    @property
    def targets(self) -> tuple[str, ...]:
        """Target names, in prediction order."""
        return tuple(self._predictors)

    def predict_timed(
        self, matrix: FloatMatrix
    ) -> tuple[dict[str, npt.NDArray[np.float32]], dict[str, tuple[int, int]]]:
        """Every target's raw output for the rows, with each call's (start_ns, end_ns).

        The matrix is handed to the libraries once; that hand-over is timed with the first target.
        """
        by_target: dict[str, npt.NDArray[np.float32]] = {}
        times: dict[str, tuple[int, int]] = {}
        with self._lock:
            started_ns = time.time_ns()
            rows = self._dmatrix(matrix, dtype="float32")
            for target, predictor in self._predictors.items():
                by_target[target] = predictor.predict(rows).reshape(-1)
                ended_ns = time.time_ns()
                times[target] = (started_ns, ended_ns)
                started_ns = ended_ns
        return by_target, times


def check_matrix(boosters: Mapping[str, Any], columns: list[int] | None, seed: int = 0) -> FloatMatrix:
    """Rows on which compiled and XGBoost outputs must agree, in the model's columns.

    Random rows over each feature's whole range, zeros, every feature at its largest value, and rows
    that put a feature exactly on each split threshold (and one float32 step either side), where a
    different comparison would show.
    """
    rng = np.random.default_rng(seed)
    fraction = {FEATURE_NAMES.index("kv_cache_percentage"), FEATURE_NAMES.index("prefix_cache_score")}
    pod_type = FEATURE_NAMES.index("pod_type_code")
    raw = len(FEATURE_NAMES) - 2  # the derived token and encoder columns are computed
    random_rows = np.empty((512, len(FEATURE_NAMES)), dtype=np.float32)
    for column in range(raw):
        if column in fraction:
            random_rows[:, column] = rng.uniform(0.0, 1.0, 512)
        elif column == pod_type:
            random_rows[:, column] = rng.choice(sorted(set(POD_TYPE_CODES.values())), 512)
        else:  # counts from 0 to a billion, most of them small
            random_rows[:, column] = np.floor(np.exp(rng.uniform(0.0, np.log(MAX_COUNT + 1.0), 512)) - 1.0)
    largest = np.array([[1.0 if c in fraction else 2.0 if c == pod_type else MAX_COUNT for c in range(raw)]])
    full = np.zeros((514, len(FEATURE_NAMES)), dtype=np.float32)
    full[:512] = random_rows
    full[513, :raw] = largest
    # Encoder items matched never exceed the items sent (the schema refuses it).
    encoder_in, encoder_matched = (
        FEATURE_NAMES.index("encoder_input_size"),
        FEATURE_NAMES.index("encoder_matched_size"),
    )
    full[:, encoder_matched] = np.minimum(full[:, encoder_matched], full[:, encoder_in])
    add_derived_columns(full)
    model_rows = full if columns is None else np.ascontiguousarray(full[:, columns])
    on_thresholds = [model_rows]
    for booster in boosters.values():
        on_thresholds.append(_threshold_rows(booster, model_rows[:512], rng))
    return np.ascontiguousarray(np.concatenate(on_thresholds), dtype=np.float32)


def _threshold_rows(booster: Any, base: FloatMatrix, rng: np.random.Generator) -> FloatMatrix:
    """Rows with one feature set to a split threshold, and to the float32 values either side of it."""
    model = json.loads(booster.save_raw("json"))
    splits: set[tuple[int, float]] = set()
    for tree in model["learner"]["gradient_booster"]["model"]["trees"]:
        leaves = set(np.flatnonzero(np.asarray(tree["left_children"]) == -1).tolist())
        for node, (feature, threshold) in enumerate(
            zip(tree["split_indices"], tree["split_conditions"], strict=True)
        ):
            if node not in leaves:
                splits.add((int(feature), float(threshold)))
    chosen = sorted(splits)
    if len(chosen) > 2048:
        chosen = [chosen[index] for index in sorted(rng.choice(len(chosen), 2048, replace=False))]
    rows = base[rng.integers(0, len(base), 3 * len(chosen))].copy()
    for index, (feature, threshold) in enumerate(chosen):
        value = np.float32(threshold)
        for offset, nudged in enumerate(
            (value, np.nextafter(value, np.float32(-np.inf)), np.nextafter(value, np.float32(np.inf)))
        ):
            rows[3 * index + offset, feature] = nudged
    return rows


def outputs_agree(
    compiled: Mapping[str, npt.NDArray[np.float32]], reference: Mapping[str, npt.NDArray[np.float32]]
) -> str | None:
    """``None`` when every target agrees within float32 tolerance, else what differs."""
    for target, expected in reference.items():
        actual = compiled[target]
        allowed = ABSOLUTE_TOLERANCE + RELATIVE_TOLERANCE * np.abs(expected)
        difference = np.abs(actual.astype(np.float64) - expected)
        if actual.shape != expected.shape or not np.all(difference <= allowed):
            worst = int(np.argmax(difference - allowed)) if actual.shape == expected.shape else -1
            return (
                f"{target}: compiled output differs from XGBoost's "
                f"(row {worst}: {actual.reshape(-1)[worst]!r} against {expected.reshape(-1)[worst]!r})"
            )
    return None


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
            sys.executable, "-m", "podlatency.compiled", "--bundle", str(bundle_folder),
            "--out", str(staging), "--compiler", self.compiler, "--targets", ",".join(boosters),
        ]  # fmt: skip
        started = time.monotonic()
        try:
            child = self._child = subprocess.Popen(  # noqa: S603  (our own module, fixed arguments)
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its compilers are stopped with it (close)
                preexec_fn=_lowest_priority,  # noqa: PLW1509  (no lock is taken in between)
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


def _lowest_priority() -> None:
    os.nice(19)


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


# -- the compile child: python -m podlatency.compiled ------------------------------------------------


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
    parser = argparse.ArgumentParser(prog="python -m podlatency.compiled", description=main.__doc__)
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
