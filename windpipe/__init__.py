"""windpipe: from a pile of notebooks to a tracked, reproducible MLflow pipeline."""

__version__ = "0.1.0"
