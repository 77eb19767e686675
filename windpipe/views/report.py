"""The weekly report: recorded vs predicted for one ISO week, from the production model, as one HTML file.

The file embeds plotly.js once (inline, no CDN), so it opens offline and travels as an e-mail
attachment. It is written atomically: a failed report leaves no file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from windpipe.errors import UsageError, WindpipeError
from windpipe.fileio import atomic_write_text
from windpipe.settings import Settings, default_report_path
from windpipe.views import frames as D
from windpipe.views.source import ModelSource, ProductionModel

if TYPE_CHECKING:
    from plotly import graph_objects as go

TEMPLATE = "report.html.jinja"
WEEK_RE = re.compile(r"^(\d{4})-W(\d{2})$")


def parse_week(week: str) -> pd.Timestamp:
    """Monday 00:00 UTC of an ISO week written YYYY-Www (e.g. 2016-W52)."""
    m = WEEK_RE.match(week.strip())
    if not m:
        raise UsageError(f"{week!r} is not an ISO week.", "write it as YYYY-Www, e.g. 2016-W51")
    try:
        day = datetime.fromisocalendar(int(m.group(1)), int(m.group(2)), 1)
    except ValueError:
        raise UsageError(f"{week} does not exist (ISO years have 52 or 53 weeks).",
                            "pick a week from 01 to 52 (53 in long years)") from None
    return pd.Timestamp(day).tz_localize("UTC")


def week_label(monday: pd.Timestamp) -> str:
    iso = monday.isocalendar()
    return f"{iso[0]}-W{iso[1]:02d}"


def last_full_week(df: pd.DataFrame) -> pd.Timestamp:
    """Monday of the last ISO week whose 168 hours all lie within the data's time span."""
    end = df.index.max() + pd.Timedelta(hours=1)
    monday = (end - pd.Timedelta(days=7)).normalize()
    monday = monday - pd.Timedelta(days=monday.weekday())
    if monday + pd.Timedelta(days=7) > end:
        monday -= pd.Timedelta(days=7)
    if monday < df.index.min().normalize():
        raise WindpipeError("The data holds no full ISO week.", "pass --week YYYY-Www for a partial week")
    return monday


@dataclass
class WeeklyReport:
    week: str
    start: pd.Timestamp
    end: pd.Timestamp
    frame: pd.DataFrame  # predict_frame result for the week
    errors: dict[str, dict[str, float]]
    model: ProductionModel
    summary: dict

    @property
    def last_day(self) -> str:
        return f"{self.end - pd.Timedelta(days=1):%Y-%m-%d}"


def compute(pm: ProductionModel, week: str | None = None) -> WeeklyReport:
    """Predict the chosen week (default: the last full one) and compute its errors."""
    monday = parse_week(week) if week else last_full_week(pm.data)
    end = monday + pd.Timedelta(days=7)
    part = pm.data.loc[(pm.data.index >= monday) & (pm.data.index < end)]
    label = week_label(monday)
    if part.empty:
        raise WindpipeError(
            f"No data in week {label} ({monday:%Y-%m-%d} to {end - pd.Timedelta(days=1):%Y-%m-%d}): the model's "
            f"data covers {pm.data.index.min():%Y-%m-%d} to {pm.data.index.max():%Y-%m-%d}.",
            f"pick a week in that span, or omit --week for the last full week ({week_label(last_full_week(pm.data))})"
            if len(pm.data) >= 168 else "pick a week in that span")
    frame = D.predict_frame(pm.model, part)
    return WeeklyReport(label, monday, end, frame, D.errors(frame), pm, D.data_summary(part))


def render(rep: WeeklyReport, settings: Settings) -> str:
    """The report as one self-contained HTML page (plotly.js inlined once)."""
    import jinja2
    import plotly.io as pio

    from windpipe.views import figures as F

    fig = F.prediction_figure(rep.frame, f"Week {rep.week}: recorded vs predicted")
    scatter = _scatter_figure(rep.frame)
    figures = [pio.to_html(fig, include_plotlyjs=True, full_html=False, config={"displaylogo": False}),
               pio.to_html(scatter, include_plotlyjs=False, full_html=False, config={"displaylogo": False})]
    env = jinja2.Environment(loader=jinja2.PackageLoader("windpipe", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "jinja"]))
    pm = rep.model
    return env.get_template(TEMPLATE).render(
        rep=rep, pm=pm, figures=figures, labels=F.LABELS, metrics=pm.metrics(),
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), tracking_uri=settings.effective_tracking_uri,
        hours_expected=168,
    )


def _scatter_figure(frame: pd.DataFrame) -> go.Figure:
    from plotly import graph_objects as go
    from plotly.subplots import make_subplots

    from windpipe.names import TARGETS
    from windpipe.views.figures import COLORS, LABELS

    fig = make_subplots(rows=1, cols=2, subplot_titles=[LABELS[t] for t in TARGETS])
    for col, target in enumerate(TARGETS, start=1):
        lo = float(min(frame[target].min(), frame[f"pred_{target}"].min()))
        hi = float(max(frame[target].max(), frame[f"pred_{target}"].max()))
        fig.add_trace(go.Scatter(x=frame[target], y=frame[f"pred_{target}"], mode="markers", name=target,
                                 marker={"size": 4, "color": COLORS[target], "opacity": 0.6}), row=1, col=col)
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", showlegend=False,
                                 line={"color": "#888", "dash": "dot"}), row=1, col=col)
        fig.update_xaxes(title_text="recorded (GW)", row=1, col=col)
        fig.update_yaxes(title_text="predicted (GW)", row=1, col=col)
    fig.update_layout(height=380, template="plotly_white", showlegend=False, margin={"t": 40})
    return fig


def create_report(settings: Settings, week: str | None = None, out: Path | str | None = None,
                  source: ModelSource | None = None) -> tuple[Path, WeeklyReport]:
    """Compute and write the weekly report (atomically); return its path and content."""
    source = source or ModelSource(settings)
    if week:
        parse_week(week)  # a malformed week fails before any network work
    pm = source.production()
    rep = compute(pm, week)
    html = render(rep, settings)
    path = atomic_write_text(Path(out) if out else default_report_path(), html)
    return path, rep
