"""The weekly report: its numbers against the model's own predictions, and its error paths."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from tests.models import log_registered_model, tiny_processed
from windpipe.errors import WindpipeError
from windpipe.names import FEATURES, TARGETS, TIMESTAMP
from windpipe.settings import get_settings
from windpipe.views import frames as D
from windpipe.views.report import create_report, last_full_week, parse_week, week_label


def test_parse_week_and_its_errors():
    assert parse_week("2016-W52") == pd.Timestamp("2016-12-26", tz="UTC")
    assert week_label(parse_week("2015-W01")) == "2015-W01"
    with pytest.raises(WindpipeError, match="not an ISO week"):
        parse_week("2016-52")
    with pytest.raises(WindpipeError, match="does not exist"):
        parse_week("2015-W54")


def test_last_full_week():
    df = D.index_frame(tiny_processed())  # 2013-01-01 .. 2013-03-01 (a Friday)
    monday = last_full_week(df)
    assert monday.weekday() == 0 and monday + pd.Timedelta(days=7) <= df.index.max() + pd.Timedelta(hours=1)
    assert week_label(monday) == "2013-W08"
    with pytest.raises(WindpipeError, match="no full ISO week"):
        last_full_week(df.head(100))


@pytest.mark.slow
def test_report_numbers_match_the_models_own_predictions(use_platform, tmp_path):
    import mlflow

    info = log_registered_model(use_platform)
    out = tmp_path / "r" / "weekly.html"
    path, rep = create_report(get_settings(), week="2013-W05", out=out)
    assert path == out and rep.week == "2013-W05" and rep.model.version == info["version"]

    # independently: the pyfunc model on that week's rows of the training frame
    df = info["df"]
    ts = pd.to_datetime(df[TIMESTAMP], utc=True)
    week = df[(ts >= "2013-01-28") & (ts < "2013-02-04")]
    model = mlflow.pyfunc.load_model(info["model_uri"])
    pred = np.asarray(model.predict(week[FEATURES].astype("float64")))
    html = out.read_text()
    for i, target in enumerate(TARGETS):
        diff = pred[:, i] - week[target].to_numpy()
        rmse, mae = float(np.sqrt(np.mean(diff ** 2))), float(np.mean(np.abs(diff)))
        assert rep.errors[target]["rmse"] == pytest.approx(rmse, rel=1e-9)
        assert rep.errors[target]["mae"] == pytest.approx(mae, rel=1e-9)
        assert f"RMSE {rmse:.3f} GW" in html and f"MAE {mae:.3f} GW" in html
    assert rep.summary["rows"] == len(week)
    assert f">{info['version']}<" in html and f"wind_solar_v{info['version']}_" in html and info["run_id"] in html
    # self-contained: plotly.js inlined exactly once, nothing from a CDN
    assert len(re.findall(r"plotly\.js v\d", html)) == 1
    # (plotly.js names a CDN only as the default map-topology URL, which line charts never fetch)
    assert not re.findall(r"<script[^>]*\bsrc=", html) and not re.findall(r"<link[^>]*href=\"?https?:", html)
    assert html.count('class="plotly-graph-div"') == 2


@pytest.mark.slow
def test_report_default_week_and_cli(use_platform, tmp_path):
    info = log_registered_model(use_platform)
    out = tmp_path / "weekly.html"
    proc = use_platform.windpipe("report", "--out", str(out), check=True)
    assert "week 2013-W08" in proc.stdout and f"wind_solar_v{info['version']}_" in proc.stdout
    assert out.exists()


@pytest.mark.slow
def test_report_week_without_data_writes_nothing(use_platform, tmp_path):
    log_registered_model(use_platform)
    out = tmp_path / "weekly.html"
    with pytest.raises(WindpipeError, match="No data in week 2016-W10"):
        create_report(get_settings(), week="2016-W10", out=out)
    assert not out.exists() and not list(tmp_path.iterdir())
    proc = use_platform.windpipe("report", "--week", "2016-W10", "--out", str(out))
    assert proc.returncode == 1 and "error: No data in week 2016-W10" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
    proc = use_platform.windpipe("report", "--week", "2016-10", "--out", str(out))
    assert proc.returncode == 2 and "YYYY-Www" in proc.stderr  # a usage error


@pytest.mark.slow
def test_report_without_production_model(use_platform, tmp_path):
    out = tmp_path / "weekly.html"
    with pytest.raises(WindpipeError, match="No model has the `production` alias") as exc:
        create_report(get_settings(model_name="nobody_promoted_this"), out=out)
    assert "windpipe pipeline run" in str(exc.value)
    assert not out.exists()
