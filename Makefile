# The two commands: `make demo` and `make test`. Both build .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
AIRFLOW_VENV := .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed-stamp
DEMO_RAW := data/raw
# the suite runs in two processes (whole test files each: a module's servers are started once);
# most of its time is spent waiting on servers, so two overlap well on two cores
TEST_WORKERS ?= 2
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install airflow demo test test-fast lint bench up down status freeze clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	@touch $@

# Apache Airflow 3 in its own environment (its pins clash with MLflow's), with windpipe installed
# --no-deps so the DAG files can build the DAGs; the tasks run .venv's windpipe by absolute path
airflow: $(AIRFLOW_STAMP)

$(AIRFLOW_STAMP): orchestration/airflow/requirements.txt pyproject.toml
	@test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet -r orchestration/airflow/requirements.txt
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet --no-deps -e .
	@touch $@

demo: install
	$(BIN)/windpipe up
	$(BIN)/windpipe demo --raw $(DEMO_RAW)

# the same demo on the team stack: PostgreSQL + S3 (rclone) + MLflow, see docs/team.md
.PHONY: demo-team
demo-team: install
	WINDPIPE_STACK=team $(BIN)/windpipe up
	WINDPIPE_STACK=team $(BIN)/windpipe demo --raw $(DEMO_RAW)

test: install airflow
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: install
	$(BIN)/python benchmarks/run_all.py

up status: install
	$(BIN)/windpipe $@

down: install
	-$(BIN)/windpipe dashboard --stop
	-$(BIN)/windpipe lab --stop
	$(BIN)/windpipe down

freeze:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^windpipe' > requirements.txt.new
	@echo "review requirements.txt.new, then move it over requirements.txt (keep the header and -e line)"

clean:
	-$(BIN)/windpipe dashboard --stop
	-$(BIN)/windpipe lab --stop
	-$(BIN)/windpipe down
	rm -rf $(VENV) $(AIRFLOW_VENV) .windpipe data/raw
