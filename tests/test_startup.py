"""Each step imports only what it uses: importing a step (or the CLI) pulls in no TensorFlow and no skops,
and the scikit-learn families fit and predict without them (TensorFlow costs ~14 s to import, skops.io ~3 s:
its import walks every scikit-learn module). Checked in a fresh interpreter's sys.modules."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import REPO

HEAVY = ("tensorflow", "keras", "skops")


def imported_after(code: str) -> dict[str, bool]:
    """Which of HEAVY (and mlflow, sklearn) a fresh interpreter holds after running `code`."""
    probe = (f"{code}\nimport sys, json\n"
             f"print(json.dumps({{m: m in sys.modules for m in {[*HEAVY, 'mlflow', 'sklearn']!r}}}))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_the_steps_and_the_cli_imports_no_tensorflow_or_skops():
    got = imported_after("import windpipe.steps.train, windpipe.steps.predict, windpipe.steps.process, "
                         "windpipe.steps.driver, windpipe.training.families")
    assert not any(got[m] for m in HEAVY), got
    cli = imported_after("import windpipe.cli")
    assert not any(cli.values()), cli  # the CLI starts on the standard library and typer alone


def test_the_sklearn_families_fit_and_predict_without_tensorflow_or_skops():
    got = imported_after(
        "from tests.models import tiny_processed\n"
        "from windpipe.training import families\n"
        "from windpipe.training.families import TrainingRows, predict_fitted\n"
        "df = tiny_processed(24 * 20)\n"
        "for name, params in (('lr', {}), ('rf', {'n_estimators': 4, 'max_depth': 4, 'min_samples_leaf': 3})):\n"
        "    fam = families.get(name)\n"
        "    predict_fitted(fam.fit_natural(TrainingRows(df, True), fam.parse(seed=0, **params)), df)")
    assert got["sklearn"]  # the probe did fit something
    assert not any(got[m] for m in HEAVY), got
