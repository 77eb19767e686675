"""Step bodies: what each MLflow Project's thin script calls."""
