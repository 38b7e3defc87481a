"""The Locust suite and the endpoint comparison runner (``python -m measure.loadtest.compare``)."""
