"""The README's picture of the DAGs in the Airflow UI, taken with Debian's headless chromium.

Needs `windpipe airflow up` to run (with the DAG runs you want to show) and the environment that
points at it; logs in with the generated admin password (as the UI's `_token` cookie).

    python benchmarks/screenshot_airflow.py --out docs/airflow.png [--page /dags/windpipe_training]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/airflow.png"))
    ap.add_argument("--page", default="/dags/windpipe_training")
    ap.add_argument("--window", default="1500,900")
    ap.add_argument("--wait", type=float, default=8.0, help="seconds for the page to draw")
    ap.add_argument("--graph", action="store_true", help="switch a DAG page to its graph view first")
    args = ap.parse_args(argv)
    from tests.browser import chrome
    from windpipe.settings import get_settings
    from windpipe.stack import airflow_server

    settings = get_settings()
    token = airflow_server.token(settings)
    with tempfile.TemporaryDirectory(prefix="airflow-shot-") as profile:
        driver = chrome(Path(profile), window=args.window)
        try:
            driver.get(f"{settings.airflow_url}/api/v2/version")  # (a cookie needs a page of its site)
            driver.add_cookie({"name": "_token", "value": token, "path": "/"})
            driver.get(f"{settings.airflow_url}{args.page}")
            time.sleep(args.wait)
            if args.graph:
                from selenium.webdriver.common.by import By

                driver.find_element(By.CSS_SELECTOR, "button[aria-label^='Show Graph']").click()
                time.sleep(args.wait)
            driver.save_screenshot(str(args.out))
        finally:
            driver.quit()
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB) of {settings.airflow_url}{args.page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
