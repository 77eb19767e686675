"""The pipeline drawn from the step interfaces: a plotly figure, each step's latest run, an offline HTML page.

    fig = pipeline_figure(load_interfaces(), statuses=step_statuses([...]))   # statuses=None: unknown
    fig = live_pipeline_figure()       # both, and a note instead of statuses when the platform is down

Layered layout from the topological order (no graphviz): sources on the left, each node one
layer right of its furthest predecessor. Steps are squares coloured by their latest run's
status; entities are circles (hollow when external).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from windpipe.errors import WindpipeError, first_line
from windpipe.pipeline.graph import PipelineGraph, build_graph, node_label
from windpipe.pipeline.interfaces import StepInterface, load_interfaces
from windpipe.settings import Settings, get_settings
from windpipe.tracking.client import client as tracking_client
from windpipe.tracking.runs import StepStatus, latest_step_runs

STATUS_COLOURS = {"FINISHED": "#2ca02c", "RUNNING": "#1f77b4", "SCHEDULED": "#1f77b4", "FAILED": "#d62728",
                  "KILLED": "#ff7f0e", "NO RUNS": "#bbbbbb", "UNKNOWN": "#7f7f7f"}
ENTITY_COLOUR = "#9467bd"


def when(status: StepStatus | None) -> str:
    """The start of a step's latest run as text ('' when unknown)."""
    if status is None or not status.start_ms:
        return ""
    return dt.datetime.fromtimestamp(status.start_ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def step_statuses(steps: Iterable[str], settings: Settings | None = None) -> dict[str, StepStatus]:
    """The latest run of each step (by the step tag) in the windpipe experiment; `NO RUNS` when none.

    Raises WindpipeError when the tracking server does not answer.
    """
    settings = settings or get_settings()
    return latest_step_runs(tracking_client(settings), settings.experiment, list(steps))


def _positions(graph: PipelineGraph) -> dict[str, tuple[float, float]]:
    """x: the node's layer (an external entity sits just before its first reader); y: spread within the layer."""
    layer_of = {n: i for i, layer in enumerate(graph.layers) for n in layer}
    for n in list(layer_of):
        readers = [layer_of[b] for a, b in graph.edges if a == n]
        if n.startswith("entity:") and not any(b == n for _, b in graph.edges) and readers:
            layer_of[n] = min(readers) - 1
    layers: list[list[str]] = [[] for _ in graph.layers]
    for n in sorted(layer_of, key=lambda n: (layer_of[n], n)):
        layers[layer_of[n]].append(n)
    pos = {}
    for x, layer in enumerate(layers):
        n = len(layer)
        for i, node in enumerate(layer):
            pos[node] = (float(x), (n - 1) / 2 - i)
    return pos


def _step_hover(spec: StepInterface, status: StepStatus | None) -> str:
    lines = [f"<b>step {spec.name}</b>", spec.description]
    for ep, params in spec.entry_points.items():
        shown = ", ".join(f"{p.name}={p.default!r}" if p.default is not None else p.name for p in params.values())
        lines.append(f"entry point {ep}({shown})" + (" (the pipeline's)" if ep == spec.entry_point else ""))
    if status is not None:
        lines.append(f"latest run: {status.status} {when(status)} {status.run_id or ''}".rstrip())
        if status.reason:
            lines.append(f"reason: {status.reason[:200]}")
    return "<br>".join(x for x in lines if x)


def _entity_hover(graph: PipelineGraph, entity: str) -> str:
    port = next((p for s in graph.specs.values() for p in (*s.outputs, *s.inputs) if p.entity == entity), None)
    lines = [f"<b>entity {entity}</b> ({port.kind if port else 'table'})"]
    if port is not None:
        if port.description:
            lines.append(port.description)
        if port.columns:
            lines.append("columns: " + ", ".join(f"{c} ({k})" for c, k in port.columns.items()))
    prod, cons = graph.producers(entity), graph.consumers(entity)
    lines.append(f"written by: {', '.join(prod) or 'outside the pipeline (external)'}")
    lines.append(f"read by: {', '.join(cons) or 'no step'}")
    return "<br>".join(lines)


def pipeline_figure(specs: Iterable[StepInterface] | PipelineGraph, statuses: Mapping[str, StepStatus] | None = None,
                    note: str | None = None, title: str = "windpipe pipeline") -> Any:
    """Steps and entities as a DAG (plotly). `statuses=None` means unknown: the figure says so.

    Raises WindpipeError when the interfaces form a cycle or leave an input unproduced.
    """
    import plotly.graph_objects as go

    graph = specs if isinstance(specs, PipelineGraph) else build_graph(specs)
    pos = _positions(graph)
    fig = go.Figure()
    edge_x: list[float | None] = []
    edge_y: list[float | None] = []
    for a, b in graph.edges:
        (x0, y0), (x1, y1) = pos[a], pos[b]
        edge_x += [x0, x1, None]
        edge_y += [y0, y1, None]
        fig.add_annotation(x=x1, y=y1, ax=x0, ay=y0, xref="x", yref="y", axref="x", ayref="y", text="",
                           showarrow=True, arrowhead=2, arrowsize=1.2, arrowwidth=1.2, arrowcolor="#888",
                           standoff=16, startstandoff=14)
    fig.add_trace(go.Scatter(x=edge_x, y=edge_y, mode="lines", line={"color": "#cccccc", "width": 1},
                             hoverinfo="skip", showlegend=False))
    steps = [n for layer in graph.layers for n in layer if n.startswith("step:")]
    labels, colours, hovers = [], [], []
    for node in steps:
        name = node_label(node)
        st = statuses.get(name) if statuses is not None else None
        state = st.status if st else "UNKNOWN"
        labels.append(f"<b>{name}</b><br>{state.lower()}" + (f"<br>{when(st)}" if when(st) else ""))
        colours.append(STATUS_COLOURS.get(state, STATUS_COLOURS["UNKNOWN"]))
        hovers.append(_step_hover(graph.specs[name], st))
    fig.add_trace(go.Scatter(
        x=[pos[n][0] for n in steps], y=[pos[n][1] for n in steps], mode="markers+text", name="steps",
        text=labels, textposition="bottom center", hovertext=hovers, hoverinfo="text",
        marker={"symbol": "square", "size": 30, "color": colours, "line": {"color": "#333", "width": 1}}))
    ents = [n for layer in graph.layers for n in layer if n.startswith("entity:")]
    external = set(graph.external)
    fig.add_trace(go.Scatter(
        x=[pos[n][0] for n in ents], y=[pos[n][1] for n in ents], mode="markers+text", name="entities",
        text=[node_label(n) for n in ents], textposition="top center",
        hovertext=[_entity_hover(graph, node_label(n)) for n in ents], hoverinfo="text",
        marker={"symbol": "circle", "size": 20,
                "color": ["white" if node_label(n) in external else ENTITY_COLOUR for n in ents],
                "line": {"color": ENTITY_COLOUR, "width": 2}}))
    if note is None and statuses is None:
        note = "run statuses unavailable"
    subtitle = note or "colour: status of each step's latest run"
    for d in graph.drivers:
        st = statuses.get(d) if statuses is not None else None
        subtitle += f" · driver {d}" + (f": {st.status.lower()} {when(st)}".rstrip() if st else "")
    fig.update_layout(
        title={"text": f"{title}<br><sup>{subtitle}</sup>"}, template="plotly_white", hovermode="closest",
        xaxis={"visible": False, "range": [-0.6, max(len(graph.layers) - 0.4, 0.6)]},
        yaxis={"visible": False, "range": [-max(len(x) for x in graph.layers) / 2 - 0.3,
                                           max(len(x) for x in graph.layers) / 2 + 0.3] if graph.layers else None},
        legend={"orientation": "h", "y": -0.05}, margin={"l": 20, "r": 20, "t": 80, "b": 40},
        height=max(360, 110 * max((len(x) for x in graph.layers), default=1) + 140))
    return fig


def statuses_or_note(steps: Iterable[str],
                     settings: Settings | None = None) -> tuple[dict[str, StepStatus] | None, str]:
    """(statuses, note): statuses None and the reason in the note when the platform is down."""
    try:
        found = step_statuses(list(steps), settings)
    except WindpipeError as exc:
        return None, f"run statuses unavailable: {exc.problem}"
    except Exception as exc:  # MLflow raises many types for a half-working server
        return None, f"run statuses unavailable: {first_line(exc, 160)}"
    return found, "colour: status of each step's latest run (hover for details)"


def live_pipeline_figure(root: Path | str | None = None, settings: Settings | None = None) -> Any:
    """The figure for projects/ with live statuses when the platform answers (for the dashboard page)."""
    settings = settings or get_settings()
    graph = build_graph(load_interfaces(root or settings.projects_dir))
    statuses, note = statuses_or_note([*graph.order, *graph.drivers], settings)
    return pipeline_figure(graph, statuses, note=note)


def write_pipeline_html(fig: Any, out: Path | str) -> Path:
    """Write the figure as a self-contained HTML page (plotly.js inlined: works offline), atomically."""
    from windpipe.fileio import atomic_path

    out = Path(out)
    with atomic_path(out, mode=0o644) as tmp:
        fig.write_html(str(tmp), include_plotlyjs=True, full_html=True)
    return out
