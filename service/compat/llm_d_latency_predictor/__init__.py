"""llm-d's latency-predictor module path, served by podlatency: for the image only, never the wheel.

The llm-d router's chart starts each prediction sidecar as
``uvicorn llm_d_latency_predictor.prediction_server:app --host ... --port N``. This package lets that
command serve podlatency when only the image is swapped. It lives outside the ``podlatency`` package
(``service/compat/``, copied into the image beside ``measure/``) because the name is llm-d's: installed
from our wheel, it would shadow llm-d's own package wherever both are installed.
"""
