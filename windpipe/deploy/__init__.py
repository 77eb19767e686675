"""Getting the production model out: an HTTP scoring server, and a Docker build context."""
