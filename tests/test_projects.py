"""Each step's own environment (projects/*/python_env.yaml, what `mlflow run` builds without --env-manager local)
pins the versions requirements.txt pins: a step run in its virtualenv gets the libraries the tests ran with."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from .conftest import REPO

STEP_FOLDERS = sorted(p.parent for p in (REPO / "projects").glob("*/MLproject"))


def _key(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): scikit_learn, Scikit-Learn -> scikit-learn."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def requirements(path: Path = REPO / "requirements.txt") -> dict[str, str]:
    """name -> pinned version of every `name==version` line."""
    out = {}
    for line in path.read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            out[_key(name)] = version.strip()
    return out


def pin_mismatches(env_file: Path, pinned: dict[str, str]) -> list[str]:
    """What in `env_file`'s dependencies is unpinned, unknown to requirements.txt, or pinned differently."""
    problems = []
    for dep in yaml.safe_load(env_file.read_text()).get("dependencies") or []:
        name, sep, version = str(dep).partition("==")
        if not sep:
            problems.append(f"{dep}: not pinned (write name==version)")
        elif _key(name) not in pinned:
            problems.append(f"{dep}: requirements.txt does not pin {name.strip()}")
        elif version.strip() != pinned[_key(name)]:
            problems.append(f"{dep}: requirements.txt pins {name.strip()}=={pinned[_key(name)]}")
    return problems


def test_every_step_has_its_own_environment():
    assert STEP_FOLDERS
    assert [f.name for f in STEP_FOLDERS if not (f / "python_env.yaml").is_file()] == []


@pytest.mark.parametrize("folder", STEP_FOLDERS, ids=lambda f: f.name)
def test_step_environment_pins_what_requirements_txt_pins(folder):
    assert pin_mismatches(folder / "python_env.yaml", requirements()) == []


def test_a_pin_that_drifted_is_named(tmp_path):
    env = tmp_path / "python_env.yaml"
    env.write_text("dependencies:\n  - Scikit_Learn==1.0\n  - pandas\n  - nothere==1\n  - mlflow==3.17.2\n")
    assert pin_mismatches(env, {"scikit-learn": "1.9.1", "pandas": "3.1.1", "mlflow": "3.17.2"}) == [
        "Scikit_Learn==1.0: requirements.txt pins Scikit_Learn==1.9.1", "pandas: not pinned (write name==version)",
        "nothere==1: requirements.txt does not pin nothere"]
