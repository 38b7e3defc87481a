"""The seed designs: the endpoint designs of the post this project grew from, kept to be measured against.

The post served an XGBoost latency model from FastAPI and predicted one pod at a time (a one-row
pandas DataFrame each) through ``asyncio.to_thread`` + ``gather``, a thread pool per request, a
dedicated pool, or one DataFrame for the batch. A podlatency server serves them under ``/seed/`` as an
extension (``PODLATENCY_EXTENSIONS=measure.seed_designs:extension``), so the Locust suite and
``make bench`` can compare them with ``/v1/predict``; production routers never need them.

- :mod:`~measure.seed_designs.models` — the post's per-row and DataFrame-batch predict;
- :mod:`~measure.seed_designs.routes` — the four designs as Litestar routes;
- :mod:`~measure.seed_designs.costs` — what one request costs in each design, without HTTP;
- :mod:`~measure.seed_designs.sleep_benchmark` — the post's own sleep benchmark, rerun.
"""

from __future__ import annotations

import os
from pathlib import Path

from podlatency.runtime import Runtime
from podlatency.web.extensions import Extension

PATH_PREFIX = "/seed/"

EXTENSION = "measure.seed_designs:extension"


def serving_env() -> dict[str, str]:
    """The environment that has a ``podlatency serve`` started from here serve the seed designs.

    ``measure`` is no installed package, so its folder's parent goes on the server's ``PYTHONPATH``.
    """
    home = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(filter(None, [home, os.environ.get("PYTHONPATH", "")]))
    return {"PODLATENCY_EXTENSIONS": EXTENSION, "PYTHONPATH": path}


def extension(runtime: Runtime) -> Extension:
    """The four designs as routes of a predicting ``runtime`` (none on a trainer-only one).

    Imported only when named: the designs need pandas, which serving does not.
    """
    if not runtime.predicts:
        return Extension(routes=())
    from measure.seed_designs.models import SeedDesigns, provide  # noqa: PLC0415
    from measure.seed_designs.routes import ROUTES  # noqa: PLC0415

    designs = SeedDesigns(runtime.settings.nthread)
    return Extension(
        routes=ROUTES,
        dependencies={"seed_designs": provide(designs)},
        prediction_paths=(PATH_PREFIX,),
        close=designs.close,
    )
