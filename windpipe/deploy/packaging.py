"""Package the production model as a Docker build context (no Docker engine needed to write it).

Reads:  `models:/<model_name>@production` (resolved once to `models:/<name>/<version>` so the
        context and the image tag name the same version).
Writes: OUT/Dockerfile, OUT/model_dir/... (MLmodel, requirements.txt, the model files) from
        `mlflow models generate-dockerfile`, plus OUT/build.sh and OUT/image.txt with the image name
        `<registry>/<env>.<pipeline>.<zone>.<step>:<run_id>`.

The context is built in a temporary folder beside OUT and renamed into place only when
complete (windpipe.fileio.atomic_folder), so OUT is either the old context, the new one, or
absent - never half-written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from windpipe import names
from windpipe.errors import UsageError, WindpipeError, first_line
from windpipe.fileio import atomic_folder
from windpipe.models.loading import version_by_alias
from windpipe.models.registry import check_promotable, instance_name
from windpipe.settings import Settings, get_settings
from windpipe.tracking.client import client as tracking_client

PIPELINE = "windpipe"
MODEL_DIR = "model_dir"
# docker reference grammar: registry host[:port][/path], name components [a-z0-9]+([._-][a-z0-9]+)*
_REGISTRY = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9.-]*[a-zA-Z0-9])?(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$")
_COMPONENT = re.compile(r"^[a-z0-9]+([_-][a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass
class PackageResult:
    """Where the build context is and what to call the image."""

    path: Path
    image: str
    model_uri: str
    version: int
    instance_name: str


def image_name(registry: str, env: str, zone: str, step: str, run_id: str, pipeline: str = PIPELINE) -> str:
    """`<registry>/<env>.<pipeline>.<zone>.<step>:<run_id>`, each part checked against docker's rules."""
    if not _REGISTRY.match(registry or ""):
        raise UsageError(f"{registry!r} is not a valid image registry.",
                         "pass e.g. --registry registry.example.com:5000/team (lowercase path)")
    for label, value in (("env", env), ("pipeline", pipeline), ("zone", zone), ("step", step)):
        if not _COMPONENT.match(value or ""):
            raise UsageError(f"The {label} {value!r} cannot be part of an image name.",
                             f"pass a lowercase {label} of letters, digits, '-' or '_' (e.g. dev, eu-west)")
    if not _TAG.match(run_id or ""):
        raise UsageError(f"{run_id!r} cannot be an image tag.", "package a version that has a run id")
    return f"{registry}/{env}.{pipeline}.{zone}.{step}:{run_id}"


def generate_dockerfile(model_uri: str, out: Path) -> None:
    """`mlflow models generate-dockerfile -m MODEL_URI -d OUT`, through MLflow's Python API."""
    from mlflow.models.flavor_backend_registry import get_flavor_backend

    backend = get_flavor_backend(model_uri, docker_build=True, env_manager=None)
    if backend is None or not backend.can_build_image():
        raise WindpipeError(f"MLflow cannot build an image for {model_uri}.", "log the model with a pyfunc flavour")
    backend.generate_dockerfile(model_uri, str(out))


def check_context(path: Path) -> list[str]:
    """What a complete build context lacks (empty list: complete)."""
    missing = []
    dockerfile = path / "Dockerfile"
    if not dockerfile.is_file():
        return ["Dockerfile"]
    if MODEL_DIR not in dockerfile.read_text(encoding="utf-8"):
        missing.append(f"Dockerfile does not copy {MODEL_DIR}")
    mlmodels = list((path / MODEL_DIR).rglob("MLmodel"))
    if not mlmodels:
        missing.append(f"{MODEL_DIR}/**/MLmodel")
    elif not (mlmodels[0].parent / "requirements.txt").is_file():
        missing.append(f"{mlmodels[0].parent.relative_to(path)}/requirements.txt")
    return missing


def package(registry: str, env: str, zone: str, out: Path | str | None = None,
            settings: Settings | None = None) -> PackageResult:
    """Write a Docker build context for the production model and return it with the image name."""
    settings = settings or get_settings()
    name = settings.model_name
    # validate what we can before any network call or disk write
    image_name(registry, env, zone, "model", "0")
    client = tracking_client(settings)
    mv = version_by_alias(client, name)
    if mv is None:
        raise WindpipeError(f"{name} has no production version to package.",
                            "promote a model first: `windpipe promote`")
    check_promotable(client, name, mv.version)
    run = client.get_run(mv.run_id)
    step = (mv.tags or {}).get(names.FAMILY_TAG) or run.data.tags.get(names.FAMILY_TAG) or "model"
    image = image_name(registry, env, zone, step, mv.run_id)
    inst = instance_name(mv)
    model_uri = names.version_uri(name, mv.version)
    target = Path(out) if out else settings.paths.output_dir("docker", inst)
    with atomic_folder(target, replace=True) as tmp:
        try:
            generate_dockerfile(model_uri, tmp)
        except WindpipeError:
            raise
        except Exception as exc:  # MlflowException, download errors
            raise WindpipeError(f"Generating the Dockerfile for {model_uri} failed ({first_line(exc)}).",
                                "check `windpipe status` and retry") from None
        (tmp / "image.txt").write_text(image + "\n", encoding="utf-8")
        build = tmp / "build.sh"
        build.write_text(f'#!/bin/sh\n# {inst} ({model_uri})\nexec docker build -t "{image}" "$(dirname "$0")"\n',
                         encoding="utf-8")
        build.chmod(0o755)
        missing = check_context(tmp)
        if missing:
            raise WindpipeError(f"The generated build context is incomplete: {', '.join(missing)}.",
                                "report this as a bug (MLflow changed its Dockerfile layout?)")
    return PackageResult(path=target, image=image, model_uri=model_uri, version=int(mv.version), instance_name=inst)
