"""Training library: split, features, the model families, metrics and figures (pure functions, no MLflow)."""
