"""Baselines: the four endpoint designs of the post this project grew from, kept to be measured against.

The post served an XGBoost latency model from FastAPI and predicted one pod at a time (a one-row
pandas DataFrame each) through ``asyncio.to_thread`` + ``gather``, a thread pool per request, a
dedicated pool, or one DataFrame for the batch. They are served under ``/variants/`` when
``PODLATENCY_VARIANTS`` is on, so the Locust suite and ``make bench`` can compare them with
``/v1/predict``; production routers never need them.

- :mod:`~podlatency.baselines.models` — the post's per-row and DataFrame-batch predict;
- :mod:`~podlatency.baselines.routes` — the four designs as Litestar routes.
"""
