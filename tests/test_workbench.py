"""`windpipe lab`: JupyterLab with a token, pointed at the platform, running the notebooks with a real kernel."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from windpipe.stack.procs import free_port

from .conftest import REPO


def _windpipe(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "windpipe", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_lab_without_a_platform_is_a_clear_error(tmp_path: Path):
    port = free_port()  # nothing listens there
    env = {**os.environ, "WINDPIPE_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
           "WINDPIPE_LAB_PORT": str(free_port()), "WINDPIPE_ENV_FILE": str(tmp_path / "no.env")}
    proc = _windpipe(env, "lab", timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "JupyterLab needs the tracking server" in proc.stderr and "windpipe up" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "lab.pid").exists()


@pytest.mark.slow
def test_lab_runs_the_notebooks_through_its_api_with_a_real_kernel(use_platform, raw_dir, tmp_path):
    import mlflow

    from .lab_client import LabKernel

    port = free_port()
    env = {**use_platform.env, "WINDPIPE_LAB_PORT": str(port)}
    # the port is taken: a clear message naming the setting, nothing started
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen(1)
        proc = _windpipe(env, "lab")
    assert proc.returncode == 1 and f"Port {port}" in proc.stderr and "--port" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr

    proc = _windpipe(env, "lab")
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        base = f"http://127.0.0.1:{port}"
        assert f"{base}/lab" in proc.stdout
        home = use_platform.home
        token_file = home / "lab_token"
        token = token_file.read_text()
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        pid = json.loads((home / "run" / "lab.pid").read_text())["pid"]
        # the token is on no command line, in no log line, in nothing printed
        assert token not in Path(f"/proc/{pid}/cmdline").read_text()
        assert token not in (home / "logs" / "lab.log").read_text() and token not in proc.stdout
        # no anonymous access
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/api/sessions", timeout=10)
        assert refused.value.code == 403
        # `windpipe status` lists it; a second `windpipe lab` finds it running
        status = _windpipe(env, "status")
        assert status.returncode == 0 and any(line.startswith("up   lab") and f"pid {pid}" in line
                                              for line in status.stdout.splitlines()), status.stdout
        again = _windpipe(env, "lab")
        assert again.returncode == 0 and f"(pid {pid})" in again.stdout

        # the notebooks, as written, in the lab's kernels: each starts in its notebook's folder with the
        # platform's MLFLOW_TRACKING_URI (the test passes the kernel nothing but tiny sizes and temp paths)
        data = tmp_path / "processed.csv"
        for notebook, params in [
            ("1_starting_point/make_processed_data.ipynb", {"raw_dir": str(raw_dir), "data_path": str(data),
                                                           "make_plots": False}),
            ("2_tracked/model_linreg.ipynb", {"data_path": str(data), "sample_rows": 24 * 21}),
            ("notebooks/visualize_pipeline.ipynb", {}),
        ]:
            kernel = LabKernel(base, token, notebook)
            try:
                where = kernel.execute("import os; print(os.getcwd(), os.environ['MLFLOW_TRACKING_URI'])")
                assert where[0]["text"].split() == [str(REPO / Path(notebook).parent), use_platform.tracking_uri]
                outputs = kernel.run_notebook(REPO / notebook, params)
            finally:
                kernel.close()
            assert outputs, notebook
        assert data.exists()
        runs = mlflow.search_runs(experiment_names=[use_platform.settings.experiment], output_format="list",
                                  filter_string="attributes.run_name = 'model_linreg'")
        assert runs and runs[0].info.status == "FINISHED" and "rmse" in runs[0].data.metrics
        pipeline_text = json.dumps(outputs)
        assert "run order: process" in pipeline_text

        stopped = _windpipe(env, "lab", "--stop")
        assert stopped.returncode == 0 and f"stopped (pid {pid})" in stopped.stdout
        assert not any(line.split()[1:2] == ["lab"] for line in _windpipe(env, "status").stdout.splitlines())
    finally:
        _windpipe(env, "lab", "--stop")
