"""Promote step: the candidate -> a registered version; `production` moves only through the gate.

Reads  MODEL_URI (the compare step's candidate) and the holdout of the run that logged it.
Writes a version of the registered model (alias challenger; production when it wins).
"""

from pathlib import Path

from windpipe.steps.cli import run_entry_points
from windpipe.steps.promote import main

if __name__ == "__main__":
    run_entry_points(Path(__file__).parent, main=main)
