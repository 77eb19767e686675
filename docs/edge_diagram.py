"""Draw docs/edge.png: the processes of windpipe on Airflow's EdgeExecutor (docs/orchestration.md, "Past one machine").

    .venv/bin/python docs/edge_diagram.py [--out docs/edge.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

BOXES = {  # name -> (x, y, width, height, colour, text)
    "central": (0.2, 3.3, 9.6, 3.7, "#eef3fb", "central machine  (windpipe up; windpipe airflow up --executor edge)"),
    "api": (0.5, 5.4, 2.9, 0.95, "#c9dcf5", "Airflow API server\nUI, REST, execution API,\nedge workers' API"),
    "sched": (3.6, 5.4, 2.9, 0.95, "#c9dcf5", "scheduler\n+ EdgeExecutor"),
    "dagproc": (6.7, 5.4, 2.9, 0.95, "#c9dcf5", "DAG processor\n(this checkout's DAG files)"),
    "pg": (0.5, 3.6, 2.9, 0.95, "#f6e3c6", "PostgreSQL\nAirflow's database, tracking\nstore, data marts"),
    "mlflow": (3.6, 3.6, 2.9, 0.95, "#d5ecd4", "MLflow tracking server\nbasic auth, artifacts proxied"),
    "s3": (6.7, 3.6, 2.9, 0.95, "#f6e3c6", "S3 (rclone serve s3)\nartifacts"),
    "wa": (0.2, 0.2, 4.6, 2.1, "#f3f3f3", "worker a  (windpipe airflow worker --queues heavy)"),
    "wb": (5.2, 0.2, 4.6, 2.1, "#f3f3f3", "worker b  (windpipe airflow worker --queues default)"),
    "ea": (0.5, 0.5, 1.9, 0.9, "#c9dcf5", "airflow edge worker\n(+ Airflow's env)"),
    "sa": (2.6, 0.5, 1.9, 0.9, "#d5ecd4", "task: windpipe\npipeline step keras\n(main env)"),
    "eb": (5.5, 0.5, 1.9, 0.9, "#c9dcf5", "airflow edge worker\n(+ Airflow's env)"),
    "sb": (7.6, 0.5, 1.9, 0.9, "#d5ecd4", "task: windpipe\npipeline step lr\n(main env)"),
}
# (from point, to point, label, label position): polylines drawn as plain arrows
ARROWS = [
    ((1.45, 1.4), (1.2, 5.4), "poll jobs, heartbeats,\nlogs (HTTP, JWT)", (1.3, 2.75)),
    ((6.45, 1.4), (2.6, 5.4), "", None),
    ((3.55, 1.4), (4.6, 3.6), "runs, metrics, artifacts\n(HTTP, login)", (4.2, 2.75)),
    ((8.55, 1.4), (5.6, 3.6), "", None),
    ((1.95, 5.4), (1.95, 4.55), "", None),
    ((5.05, 5.4), (2.9, 4.55), "", None),
    ((3.6, 4.07), (3.4, 4.07), "", None),
    ((6.5, 4.07), (6.7, 4.07), "", None),
]
WORKER_NOTE = "each worker: its own checkout, state folder and Unix user; the network only, no shared disk"


def draw(out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    fig, ax = plt.subplots(figsize=(10, 7.2), dpi=100)
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 7.2)
    ax.axis("off")
    for name, (x, y, w, h, colour, text) in BOXES.items():
        group = name in ("central", "wa", "wb")
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", fc=colour,
                                    ec="#555555", lw=1.4 if group else 1.0, ls="--" if group else "-"))
        if group:
            ax.text(x + 0.15, y + h - 0.25, text, fontsize=9.5, weight="bold", va="center")
        else:
            ax.text(x + w / 2, y + h / 2, text, fontsize=8.5, ha="center", va="center")
    for start, end, label, where in ARROWS:
        ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "->", "color": "#333333", "lw": 1.1})
        if label:
            ax.text(*where, label, fontsize=7.5, color="#333333", backgroundcolor="white")
    ax.text(5, 2.45, WORKER_NOTE, fontsize=8.5, ha="center", style="italic")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("edge.png"))
    print(draw(parser.parse_args().out))
