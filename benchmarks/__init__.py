"""Benchmarks of real podlatency servers on this machine: tooling, not part of the served package.

- ``python -m benchmarks.bench`` (``make bench``): latency, model compute, memory, the concurrency sweep
  against the baselines, and the soak, checked against the targets;
- ``python -m benchmarks.gpu_bench``: CPU against GPU predict time per batch size, and the crossover;
- :mod:`benchmarks.servers`: start a server on a free loopback port, wait for it, read its CPU and
  memory, stop it (also used by ``loadtest/`` and the integration tests);
- :mod:`benchmarks.clients`: keep-alive HTTP clients that time requests.
"""
