"""Quiet output: a person's lines on the console, diagnostics in the step run's log artifact, --verbose shows them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

# a step in miniature: the same setup as a step script (run_entry_points), one run, each kind of output
STEP = """
import logging, os, warnings
from windpipe.tracking.output import setup_process
setup_process()
from windpipe.tracking.runs import step_run
with step_run("quiet_check") as run:
    os.write(2, b"I0000 00:00:1796171937.105857   32130 cudart_stub.cc:31] a C++ line\\n")
    logging.getLogger("mlflow.something").info("a library diagnostic")
    warnings.warn("a library warning")
    logging.getLogger("windpipe.check").warning("a warning for a person")
    print("the result", flush=True)
print("run", run.info.run_id)
"""


def _step(platform, verbose: bool = False) -> tuple[subprocess.CompletedProcess, str]:
    env = {**platform.env, "MLFLOW_EXPERIMENT_NAME": platform.settings.experiment}
    if verbose:
        env["WINDPIPE_VERBOSE"] = "1"
    proc = subprocess.run([sys.executable, "-c", STEP], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, proc.stdout.split("run ")[-1].strip()


@pytest.mark.slow
def test_a_step_prints_results_and_logs_diagnostics_to_its_run(use_platform):
    import mlflow

    proc, run_id = _step(use_platform)
    assert "the result" in proc.stdout
    assert proc.stdout.count("quiet_check run: http://") == 1 and f"/runs/{run_id}" in proc.stdout
    assert "a warning for a person" in proc.stderr
    for diagnostic in ("a C++ line", "a library diagnostic", "a library warning", "View run"):
        assert diagnostic not in proc.stdout + proc.stderr, diagnostic
    log = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="logs/quiet_check.log"))
    text = log.read_text()
    for line in ("a C++ line", "a library diagnostic", "a library warning", "a warning for a person"):
        assert line in text, (line, text)

    # --verbose: the same diagnostics on the console as well
    proc, _ = _step(use_platform, verbose=True)
    assert "a C++ line" in proc.stderr and "a library diagnostic" in proc.stderr, proc.stderr
