"""Training library: split, features, models, metrics and figures (pure functions, no MLflow)."""
