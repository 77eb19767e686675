"""`windpipe package`: a complete Docker build context for the production model, and the image name."""

from __future__ import annotations

import pytest

from windpipe.deploy.packaging import check_context, image_name
from windpipe.errors import WindpipeError

from .registry_helpers import log_candidate, make_scope


def test_image_name_follows_the_convention():
    assert image_name("reg.example.com:5000/team", "dev", "eu-west", "rf", "abc123") == \
        "reg.example.com:5000/team/dev.windpipe.eu-west.rf:abc123"
    for bad in (("", "dev", "z", "rf", "1"), ("reg/Team", "dev", "z", "rf", "1"), ("reg", "Dev", "z", "rf", "1"),
                ("reg", "dev", "z.1", "rf", "1"), ("reg", "dev", "z", "rf", "-bad")):
        with pytest.raises(WindpipeError):
            image_name(*bad)


def test_check_context_names_what_is_missing(tmp_path):
    assert check_context(tmp_path) == ["Dockerfile"]
    (tmp_path / "Dockerfile").write_text("FROM python\n")
    assert len(check_context(tmp_path)) == 2


@pytest.mark.slow
def test_package_writes_a_complete_context(use_platform, monkeypatch, tmp_path):
    from windpipe.deploy.packaging import package
    from windpipe.models.promotion import promote

    scope = make_scope(use_platform, monkeypatch)
    run_id = log_candidate(scope, family="rf")
    assert promote(scope.settings).promoted
    out = tmp_path / "ctx"
    proc = scope.cli("package", "--registry", "reg.example.com:5000/team", "--env", "dev", "--zone", "eu-west",
                     "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    image = f"reg.example.com:5000/team/dev.windpipe.eu-west.rf:{run_id}"
    assert proc.stdout.strip().splitlines()[-1] == image
    assert check_context(out) == []
    dockerfile = (out / "Dockerfile").read_text()
    assert "model_dir" in dockerfile and "COPY" in dockerfile
    mlmodel = next((out / "model_dir").rglob("MLmodel"))
    assert (mlmodel.parent / "requirements.txt").is_file() and (mlmodel.parent / "python_env.yaml").is_file()
    assert "python_function" in mlmodel.read_text()
    assert (out / "image.txt").read_text().strip() == image
    assert [p.name for p in tmp_path.iterdir()] == ["ctx"]  # no temporary folders left

    # again into the same folder: replaced whole; a bad zone writes nothing
    res = package("reg.example.com", "prod", "z1", out, scope.settings)
    assert res.image == f"reg.example.com/prod.windpipe.z1.rf:{run_id}" and check_context(out) == []
    assert (out / "image.txt").read_text().strip() == res.image
    with pytest.raises(WindpipeError, match="zone"):
        package("reg.example.com", "prod", "Zone 1", tmp_path / "other", scope.settings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctx"]
