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


def run_python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return (proc.stdout.strip().splitlines() or [""])[-1]


def test_skops_from_the_cached_type_lists_trusts_what_skops_trusts_and_skips_the_walk():
    """windpipe.models.skops_types: the first process imports skops as skops does and caches its default trusted
    types; a later one gets the same lists from the cache without importing every scikit-learn module (a module
    only skops's walk imports stays unloaded), and saves and loads a model with default trust."""
    from windpipe.models.skops_types import MODULE

    listed = ("import json, sys\nfrom windpipe.models.skops_types import MODULE, trusted_lists\n"
              "print(json.dumps(trusted_lists(sys.modules[MODULE])))")
    run_python("from windpipe.models.skops_types import cache_file, import_skops\n"
               "cache_file().unlink(missing_ok=True)\nimport_skops()\nassert cache_file().exists()")
    fresh = json.loads(run_python(f"import skops.io\n{listed}"))
    assert len(fresh["SKLEARN_ESTIMATOR_TYPE_NAMES"]) > 100 and fresh["NUMPY_UFUNC_TYPE_NAMES"]
    cached = json.loads(run_python(
        "from windpipe.models.skops_types import import_skops\nimport_skops()\nimport sys\n"
        f"assert 'from windpipe' in sys.modules[{MODULE!r}].__doc__  # (the cached module, not skops's file)\n"
        "assert 'sklearn.feature_extraction.image' not in sys.modules, 'the walk ran'\n"
        "import numpy as np, skops.io\nfrom sklearn.linear_model import LinearRegression\n"
        "m = LinearRegression().fit(np.eye(3), [1.0, 2.0, 3.0])\n"
        "assert skops.io.get_untrusted_types(data=skops.io.dumps(m)) == []\n"
        "assert skops.io.loads(skops.io.dumps(m)).predict(np.eye(3)).round(6).tolist() == [1.0, 2.0, 3.0]\n"
        f"{listed}"))
    assert cached == fresh


def test_a_damaged_skops_type_cache_is_ignored_and_rewritten():
    out = run_python(
        "from windpipe.models.skops_types import cache_file, import_skops, MODULE\nimport sys\n"
        "cache_file().parent.mkdir(parents=True, exist_ok=True)\ncache_file().write_text('{\"SKLEARN_EST')\n"
        "import_skops()\nimport skops.io\n"
        "assert 'sklearn.feature_extraction.image' in sys.modules  # skops's own import, walk and all\n"
        "import json\nprint(len(json.loads(cache_file().read_text())['SKLEARN_ESTIMATOR_TYPE_NAMES']))")
    assert int(out) > 100
