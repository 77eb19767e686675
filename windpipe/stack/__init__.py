"""The platform windpipe starts on this machine: process bookkeeping, the FTP artifact server, the
MLflow tracking server, and `up` / `down` / `status` over them."""
