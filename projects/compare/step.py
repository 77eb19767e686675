"""Compare step: the models the training steps wrote -> the best one (the promotion candidate).

Reads  MODELS (model URIs) and their runs' metrics.
Writes the candidate (tag windpipe.entity.candidate), metric best_<metric>, compare.md (the ranking).
"""

from pathlib import Path

from windpipe.steps.cli import run_entry_points
from windpipe.steps.compare import main

if __name__ == "__main__":
    run_entry_points(Path(__file__).parent, main=main)
