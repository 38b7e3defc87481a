"""podlatency: per-pod TTFT and TPOT prediction for LLM inference routing."""

__version__ = "0.1.0"
