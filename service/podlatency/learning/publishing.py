"""Where a new model version goes once trained: the :class:`Publisher` protocol, and the model folder's.

The retrainer, the retrain route and the standby trainers' forwarding ask a publisher whether this
process leads, and hand it what to publish. In a cluster the publisher is
:class:`~podlatency.cluster.rollout.ClusterRollout` (it stores the bundle, serves it, and declares it
in the rollout ConfigMap); on a model folder it is :class:`FolderPublisher`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from podlatency.bundle import ModelBundle
from podlatency.prediction_service import PredictionService


@runtime_checkable  # routes take it as a Litestar dependency, which checks its type
class Publisher(Protocol):
    """Where a retrained model goes."""

    def leads(self) -> bool:
        """Whether this process may retrain and publish now (one trainer of several leads)."""
        ...

    def publish(self, bundle: ModelBundle) -> bool:
        """Store ``bundle`` and roll it out; False when something (a pin) keeps it from being published."""
        ...

    def leader_url(self) -> str | None:
        """Where samples go when this process does not lead (``None``: it leads, or no leader is known)."""
        ...


class FolderPublisher:
    """Publishes into the model folder: store, activate (predictors watching the folder follow), serve."""

    def __init__(self, service: PredictionService) -> None:
        self.service = service

    def leads(self) -> bool:
        """One process owns a model folder: always."""
        return True

    def leader_url(self) -> str | None:
        """Nowhere else: this process leads."""
        return None

    def publish(self, bundle: ModelBundle) -> bool:
        """Store and activate ``bundle``, and serve it here at once."""
        self.service.registry.save(bundle, activate=True)
        self.service.serve_bundle(bundle)
        return True
