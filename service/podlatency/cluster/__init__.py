"""The operator-style loops, with the official ``kubernetes`` client.

- :mod:`~podlatency.cluster.configmap` — the ConfigMap that declares the model version every replica
  serves (``data.version``, ``data.sha256``, ``data.url``): watched by all, published into by the
  leader trainer, never over a pin.
- :mod:`~podlatency.cluster.election` — leader election on a Lease, so one trainer of several publishes.
- :mod:`~podlatency.cluster.events` — rollouts, failures and leadership changes as Kubernetes Events.
- :mod:`~podlatency.cluster.rollout` — :class:`ClusterRollout`, one process's part in all of it; it
  applies declared versions with :mod:`podlatency.follower` (download, verify, hot-swap).

Imported only in a cluster (``PODLATENCY_ROLLOUT_CONFIGMAP`` set): a model folder needs none of it.
"""
