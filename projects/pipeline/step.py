"""Pipeline project: the driver.

Reads  RAW_DIR (raw OPSD-shaped CSV files) and the step interfaces (projects/*/step.yaml);
runs every step of the training pipeline as a child run of its own project, reused when cached.
"""

from pathlib import Path

from windpipe.steps.cli import run_entry_points
from windpipe.steps.driver import project_main

if __name__ == "__main__":
    run_entry_points(Path(__file__).parent, main=project_main)
