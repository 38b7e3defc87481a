"""``uvicorn llm_d_latency_predictor.prediction_server:app``: a podlatency predictor, set up from env.

llm-d's variables are read as :mod:`podlatency.llmd_settings` says: ``SERVER_TYPE=prediction-<n>``
makes it a predictor, ``TRAINING_SERVER_URL`` the trainer it follows, ``LOCAL_TTFT_MODEL_PATH``'s
folder its model folder. uvicorn's ``--host`` and ``--port`` decide where it listens.
"""

from podlatency.web.app import app_from_env

app = app_from_env()
