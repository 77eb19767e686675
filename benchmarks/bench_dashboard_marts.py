"""What a burst of dashboard views does to the data marts and to the server's memory (issue 28 item 2).

1,000 prediction views of distinct date ranges (random, seeded) over real-size data (../shared/data/germany.csv,
else 4 generated years), from 4 threads as gunicorn's worker serves them, into SQLite marts in a temporary
folder; the views come in waves of `--pace` (8: the queue's bound) and each wave is recorded before the next,
as when views come over a day and the writer keeps up (a burst faster than the writer drops what overflows
the queue, which hides the growth). Each run is a fresh process: RSS before the burst (the model and the
data loaded, one view done) and after it with the queue drained, the batches and rows the marts gained, the size
of marts.db. The previous code (git `--base`, default main) and this checkout run alternately.

    python benchmarks/bench_dashboard_marts.py [--views 1000] [--rounds 2] [--base main]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, table


def child(views: int, pace: int, out: Path) -> None:
    """One burst in this process (the windpipe on sys.path: this checkout or the previous code)."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    import mlflow
    import pandas as pd
    import psutil
    from sklearn.linear_model import LinearRegression

    import windpipe  # (first: bench_dashboard puts this checkout on sys.path)
    from windpipe.marts import queries, tables
    from windpipe.names import FEATURES, TARGETS
    from windpipe.settings import Settings
    from windpipe.views import source as S
    from windpipe.views.dashboard.app import create_app

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_dashboard import real_data

    df, _name = real_data()
    with tempfile.TemporaryDirectory(prefix="bench-marts-") as tmp:
        mlflow.sklearn.save_model(LinearRegression().fit(df[FEATURES], df[TARGETS]), f"{tmp}/model",
                                  serialization_format="cloudpickle", pip_requirements=["scikit-learn"])
        model = mlflow.pyfunc.load_model(f"{tmp}/model")
        pm = S.ProductionModel("wind_solar", 1, "bench", {"windpipe.instance_name": "wind_solar_v1_bench"}, model, df)

        class Source(S.ModelSource):
            def status(self) -> S.SourceStatus:
                return S.SourceStatus("ok", 1)

        settings = Settings(home=Path(tmp), marts_url=f"sqlite:///{tmp}/marts.db")
        board = create_app(settings, source=Source(settings, loader=lambda _s, _v: pm)).windpipe
        store, _b, start, end = board.refresh(None, None, None)
        board.predictions(store, start, end)
        board.flush(600)
        days = pd.date_range(df.index.min().normalize(), df.index.max().normalize(), freq="D").strftime("%Y-%m-%d")
        rng = random.Random(7)
        ranges: set[tuple[str, str]] = set()
        while len(ranges) < views:
            a, b = sorted(rng.sample(range(len(days)), 2))
            ranges.add((days[a], days[b]))
        me = psutil.Process()
        engine = tables.get_engine(settings=settings)
        before_rows = queries.count_rows(engine)
        rss_before = me.memory_info().rss
        t0 = time.perf_counter()
        ordered, messages = sorted(ranges, key=lambda _r: rng.random()), []
        with ThreadPoolExecutor(max_workers=4) as pool:
            for at in range(0, views, pace):  # views over time: the writer keeps up (the queue never drops one)
                messages += pool.map(lambda r: board.predictions(store, *r)[1], ordered[at:at + pace])
                board.flush(1800)
        drained = time.perf_counter() - t0
        rss_after = me.memory_info().rss
        rows = queries.count_rows(engine)
        result = {"code": str(Path(windpipe.__file__).parent.parent), "views": views,
                  "errors": sum(1 for m in messages if m), "drained_s": drained, "pace": pace,
                  "batches": rows.get("batches", 0) - before_rows.get("batches", 0),
                  "input_rows": rows.get("input_mart", 0) - before_rows.get("input_mart", 0),
                  "marts_mb": sum(p.stat().st_size for p in Path(tmp).glob("marts.db*")) / 1e6,
                  "rss_before_mb": rss_before / 1e6, "rss_after_mb": rss_after / 1e6, "hours": len(df)}
        tables.dispose_engines()
    out.write_text(json.dumps(result))


def previous_code(base: str, into: Path) -> Path:
    """The `windpipe` package of git revision `base`, unpacked into `into`."""
    archive = subprocess.run(["git", "archive", base, "windpipe"], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run(code: Path, views: int, pace: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-marts-out-") as tmp:
        out = Path(tmp) / "result.json"
        env = {**os.environ, "PYTHONPATH": str(code), "MLFLOW_DISABLE_TELEMETRY": "true"}
        subprocess.run([sys.executable, __file__, "--child", str(out), "--views", str(views), "--pace", str(pace)],
                       env=env, check=True, cwd=tempfile.gettempdir())
        return json.loads(out.read_text())


def main() -> None:
    views = int(sys.argv[sys.argv.index("--views") + 1]) if "--views" in sys.argv else 1000
    pace = int(sys.argv[sys.argv.index("--pace") + 1]) if "--pace" in sys.argv else 8
    if "--child" in sys.argv:
        child(views, pace, Path(sys.argv[sys.argv.index("--child") + 1]))
        return
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 2
    base = sys.argv[sys.argv.index("--base") + 1] if "--base" in sys.argv else "main"
    results: dict[str, list[dict]] = {base: [], "this checkout": []}
    with tempfile.TemporaryDirectory(prefix="bench-marts-prev-") as prev:
        codes = {base: previous_code(base, Path(prev)), "this checkout": REPO}
        for _ in range(rounds):  # alternately, so that load on the machine hits both alike
            for name, code in codes.items():
                results[name].append(run(code, views, pace))
                print(json.dumps(results[name][-1]), flush=True)
    rows = []
    for name, runs in results.items():
        def med(key: str, runs: list[dict] = runs) -> float:
            return statistics.median(r[key] for r in runs)
        rows.append([name, runs[0]["views"], int(med("errors")), int(med("batches")), int(med("input_rows")),
                     runs[0]["hours"], med("marts_mb"), med("rss_before_mb"), med("rss_after_mb"),
                     med("rss_after_mb") - med("rss_before_mb"), med("drained_s")])
    print(f"dashboard views: distinct date ranges from 4 threads, {pace} at a time, each wave recorded before the next "
          f"(the marts writer keeps up: nothing dropped); medians of {rounds} runs each\n")
    print(table(["code", "views", "errors", "batches", "rows in marts", "hours of data", "marts.db MB",
                 "RSS before MB", "RSS after MB", "RSS growth MB", "seconds"], rows))
    print(f"\nload average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
