"""Render the weekly HTML report (report/output/weekly_report.html). All logic lives in `windpipe.report`.

    python report/create_report.py [--week 2016-W51] [--out PATH]

is the same as `windpipe report`.
"""

from windpipe.cli import main

if __name__ == "__main__":
    import sys

    main(["report", *sys.argv[1:]])
