"""The MLflow tracking server as a client sees it: connecting, health probes, and the runs of steps."""
