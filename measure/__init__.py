"""Everything that measures podlatency, in one home outside the served package.

Nothing in ``podlatency`` imports this package; it imports ``podlatency``. The image copies it beside
the installed package (``/app/measure``), so the chart's in-cluster Locust and the seed designs run
from the same image.

- :mod:`measure.bench` (``make bench``): latency, model compute, memory, the concurrency sweep against
  the seed designs, and the soak, checked against the targets;
- :mod:`measure.versus_naive`, :mod:`measure.naive_app`: podlatency against the naive server a user
  writes after the seed post; :mod:`measure.versus_floor`, :mod:`measure.floor_app` (part of ``make
  bench``): the prediction routes against a Litestar async handler that only decodes the body;
  :mod:`measure.request_cost`: what each piece of a request costs, taken away one at a time;
- :mod:`measure.tracing_cost`, :mod:`measure.compile_options`, :mod:`measure.gpu_bench`: what tracing
  costs, which compile options, and the CPU/GPU crossover;
- :mod:`measure.calibration`: how well quantile models hold each quantile, per load regime and across
  load; :mod:`measure.quantile_sets`: the ways to serve several quantiles; :mod:`measure.quantile_bench`
  (part of ``make bench``): all four quantiles in one call against one; :mod:`measure.load_order`:
  what monotone constraints and the load trend cost and buy;
- :mod:`measure.seed_designs`: the seed post's four endpoint designs, served as an extension under
  ``/seed/``, what each costs without HTTP, and the post's own benchmark rerun;
- :mod:`measure.loadtest` (``make loadtest``): the Locust suite, the comparison runner and report, the
  overload run and the server choice;
- shared by all of them and by the integration tests: :mod:`measure.servers` (start a server on a
  free loopback port, wait for it, read its CPU and memory, stop it), :mod:`measure.clients`
  (keep-alive HTTP clients that time requests), :mod:`measure.cpu_state` and
  :mod:`measure.otlp_receiver` (a real OTLP/HTTP endpoint that decodes what it receives).
"""
