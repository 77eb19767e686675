"""Registry: promotion through the quality gate, rollback, listing, concurrency, bad input.

Each test works in its own experiment and registered model on the shared platform.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest

from windpipe.entities.schema import data_date
from windpipe.errors import WindpipeError
from windpipe.models.history import Move, rollback_source, settle
from windpipe.models.promotion import gate, improvement
from windpipe.models.registry import instance_name

from .conftest import REPO, point_at
from .processes import Paused, kill9
from .registry_helpers import (
    Scope,
    chained,
    decided,
    log_candidate,
    make_scope,
    new_id,
    production_moves,
    promote_in_background,
    race_promotions,
    small_df,
    wait_paused,
)

# ----------------------------------------------------------------------------------- pure functions


def test_improvement_knows_the_direction_of_each_metric():
    assert improvement(0.9, 1.0, "rmse") == pytest.approx(0.1)
    assert improvement(1.1, 1.0, "mae") == pytest.approx(-0.1)
    assert improvement(0.9, 0.8, "r2") == pytest.approx(0.125)
    assert improvement(0.7, 0.8, "r2_wind_GW") < 0


def test_gate_is_relative_and_needs_a_strict_improvement():
    assert gate(0.97, 1.0, "rmse", 0.02)[0]          # 3 % better, margin 2 %
    assert not gate(0.99, 1.0, "rmse", 0.02)[0]      # 1 % better, margin 2 %
    assert not gate(1.0, 1.0, "rmse", 0.0)[0]        # equal is not better
    passes, why = gate(1.2, 1.0, "rmse", 0.0)
    assert not passes and "not better" in why and "rmse" in why


def test_instance_name_from_tag_or_parts():
    from mlflow.entities.model_registry import ModelVersion

    v = ModelVersion("wind_solar", "3", 0, tags=[])
    assert instance_name(v) == "wind_solar_v3_nodate"
    from mlflow.entities.model_registry import ModelVersionTag

    v = ModelVersion("wind_solar", "3", 0, tags=[ModelVersionTag("windpipe.data_date", "20161231")])
    assert instance_name(v) == "wind_solar_v3_20161231"


def _m(frm, to, status="FINISHED", action="promote"):
    return Move(at=datetime(2026, 1, 1), alias="production", from_version=frm, to_version=to, action=action,
                status=status)


def _path(moves):
    return [(m.from_version, m.to_version, m.action, m.recorded) for m in moves]


def test_settle_keeps_what_happened_and_shows_outside_changes():
    # a FAILED record never happened; the alias as it is now is consistent with the records
    assert _path(settle("production", [_m(None, 1), _m(1, 2, "FAILED")], 1)) == [(None, 1, "promote", True)]
    # a record left RUNNING by a killed process: it happened iff the state after it is its `to`
    assert _path(settle("production", [_m(None, 1), _m(1, 2, "RUNNING")], 2))[-1] == (1, 2, "promote", True)
    assert len(settle("production", [_m(None, 1), _m(1, 2, "RUNNING")], 1)) == 1
    assert _path(settle("production", [_m(None, 1), _m(1, 2, "KILLED"), _m(2, 3)], 3))[1] == (1, 2, "promote", True)
    assert len(settle("production", [_m(None, 1), _m(1, 2, "KILLED"), _m(1, 3)], 3)) == 2
    # moved in the MLflow UI: between two records, and after the last one
    assert _path(settle("production", [_m(None, 1), _m(4, 5)], 6)) == [
        (None, 1, "promote", True), (1, 4, "outside", False), (4, 5, "promote", True), (5, 6, "outside", False)]
    assert _path(settle("production", [], 3)) == [(None, 3, "outside", False)]
    assert settle("production", [], None) == []


def test_rollback_source_walks_back_past_rollbacks():
    history = [_m(None, 1, action="first"), _m(1, 3), _m(3, 2, action="force"), _m(2, 3, action="rollback")]
    assert rollback_source(history, 3).from_version == 1  # undoes 1 -> 3, not the rollback 2 -> 3
    assert rollback_source(history, 2).from_version == 3
    assert rollback_source(history, 1).from_version is None  # v1 was the first
    assert rollback_source(history, 7) is None  # not in the record: fall back to the version tag


def _rollbacks(history: list, current: int, limit: int = 10) -> list:
    """Roll back until there is nothing before (as `windpipe rollback` repeated does): the versions visited."""
    visited = []
    while len(visited) < limit:
        source = rollback_source(history, current)
        if source is None or source.from_version is None:
            break
        history = [*history, _m(current, source.from_version, action="rollback")]
        current = source.from_version
        visited.append(current)
    return visited


def test_rollback_walks_back_through_forced_ping_pong_and_ends():
    """Two runs forced back and forth (A, B, A, B): rollbacks retrace the record and stop at the first move."""
    forced = [_m(None, 1, action="first"), _m(1, 2, action="force"), _m(2, 1, action="force"),
              _m(1, 2, action="force")]
    assert _rollbacks(forced, 2) == [1, 2, 1]
    assert _rollbacks([*forced, _m(2, 3), _m(3, 2, action="force")], 2) == [3, 2, 1, 2, 1]
    # a rollback the record cannot match (a store older than the history) is a move of its own
    assert _rollbacks([_m(None, 5, action="first"), _m(4, 5, action="rollback")], 5) == [4]


# ------------------------------------------------------------------------------------- with servers


@pytest.fixture
def scope(use_platform, monkeypatch):
    return make_scope(use_platform, monkeypatch)


@pytest.fixture(scope="module")
def DATE():
    return data_date(small_df())


def _tags(scope, version: int) -> dict:
    from mlflow import MlflowClient

    return MlflowClient(scope.platform.tracking_uri).get_model_version(scope.model_name, str(version)).tags


@pytest.mark.slow
def test_a_model_that_breaks_physics_is_refused_with_its_reason_and_curves_logged(scope):
    """A planted model whose power falls as wind speed and radiation rise is not promoted, not even as the first
    version; its run keeps the check and the curves. A physical model is promoted, its check logged too."""
    import mlflow
    from mlflow import MlflowClient

    from windpipe.models.promotion import PHYSICS_CHECK_PATH, PHYSICS_FIGURE_PATH, promote

    def check_of(run_id: str) -> dict:
        artifacts = {a.path for a in MlflowClient(scope.platform.tracking_uri).list_artifacts(run_id, "physics")}
        assert artifacts == {PHYSICS_CHECK_PATH, PHYSICS_FIGURE_PATH}
        return json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/{PHYSICS_CHECK_PATH}"))

    falling = log_candidate(scope, scale=-0.5)
    res = promote(scope.settings, run_id=falling)
    assert (res.promoted, res.production) == (False, None)
    assert re.search(r"wind_GW falls by [\d.]+ GW as windspeed rises from 3 to 12", res.reason)
    assert "solar_GW falls" in res.reason and _tags(scope, res.version)["windpipe.gate"] == res.reason
    check = check_of(falling)
    assert not check["passed"] and check["reason"] == res.reason
    assert {b["target"] for b in check["breaches"]} == {"wind_GW", "solar_GW"}

    physical = log_candidate(scope, scale=1.0)
    res = promote(scope.settings, run_id=physical)
    assert (res.promoted, res.production) == (True, res.version)
    assert check_of(physical)["passed"]


@pytest.mark.slow
def test_promote_gate_rollback_and_models(scope, DATE):
    from windpipe.models.promotion import promote
    from windpipe.models.registry import list_versions, rollback

    first = log_candidate(scope, scale=1.2)
    res = promote(scope.settings)
    assert (res.promoted, res.version, res.previous, res.production) == (True, 1, None, 1)
    assert res.reason == "no production version yet"
    tags = _tags(scope, 1)
    assert tags["windpipe.instance_name"] == f"{scope.model_name}_v1_{DATE}"
    assert tags["windpipe.data_date"] == DATE and tags["windpipe.run_id"] == first
    assert float(tags["holdout_rmse"]) == pytest.approx(res.challenger_metrics["rmse"], rel=1e-5)
    assert {"holdout_mae", "holdout_r2", "holdout_rmse_solar_GW"} <= set(tags)
    assert tags["windpipe.previous_production"] == ""
    datetime.fromisoformat(tags["windpipe.promoted_at"])

    # a worse challenger: challenger alias set, production unchanged
    worse = log_candidate(scope, scale=1.6)
    res = promote(scope.settings, run_id=worse)
    assert (res.promoted, res.version, res.production) == (False, 2, 1)
    assert "not better" in res.reason
    assert res.production_metrics["rmse"] < res.challenger_metrics["rmse"]
    assert scope.snapshot() == ([1, 2], {"production": "1", "challenger": "2"})

    # a better run, but not by a 90 % margin; then with no margin (same version reused)
    better = log_candidate(scope, scale=1.0)
    res = promote(scope.settings, run_id=better, margin=0.9)
    assert (res.promoted, res.version, res.production) == (False, 3, 1)
    res = promote(scope.settings)  # the best run by rmse is `better`
    assert (res.promoted, res.version, res.previous, res.production) == (True, 3, 1, 3)
    assert res.run_id == better and "better by" in res.reason
    tags = _tags(scope, 3)
    assert tags["windpipe.previous_production"] == "1" and tags["windpipe.promotion_reason"] == res.reason
    assert scope.snapshot() == ([1, 2, 3], {"production": "3", "challenger": "3"})

    # promoting production again changes nothing
    res = promote(scope.settings, run_id=better)
    assert (res.promoted, res.version, res.production) == (False, 3, 3)

    df = list_versions(scope.settings)
    assert df["version"].tolist() == [3, 2, 1]
    assert df.loc[0, "aliases"] == "challenger,production" and df.loc[2, "aliases"] == ""
    assert df["status"].eq("READY").all()

    proc = scope.cli("models")
    assert proc.returncode == 0, proc.stderr
    assert f"{scope.model_name}_v3_{DATE}" in proc.stdout and "challenger,production" in proc.stdout

    # --force moves production to the worse version; rollback restores the one it replaced
    proc = scope.cli("promote", "--run-id", worse, "--force")
    assert proc.returncode == 0, proc.stderr
    assert "promoted" in proc.stdout and "forced" in proc.stdout
    assert scope.snapshot()[1]["production"] == "2"
    proc = scope.cli("rollback")
    assert proc.returncode == 0, proc.stderr
    assert f"-> v3 ({scope.model_name}_v3_{DATE}), was v2" in proc.stdout
    assert scope.snapshot()[1]["production"] == "3"
    assert _tags(scope, 3)["windpipe.promotion_reason"] == "rollback from v2"
    # rolling back again walks further back (v3 replaced v1) ... and v1 had no predecessor
    assert rollback(scope.settings).version == 1
    assert scope.snapshot()[1]["production"] == "1"
    before = scope.snapshot()
    proc = scope.cli("rollback")
    assert proc.returncode == 1
    assert "error: " in proc.stderr and "no previous one" in proc.stderr and "Traceback" not in proc.stderr
    assert scope.snapshot() == before

    # the alias history holds every move, in order, with who and why
    from windpipe.models.history import history

    df = history(scope.settings)
    prod = df[df["alias"] == "production"]
    assert list(zip(prod["from_version"].astype(object).where(prod["from_version"].notna(), None),
                    prod["to_version"], prod["action"], strict=True)) == [
        (None, 1, "first"), (1, 3, "promote"), (3, 2, "force"), (2, 3, "rollback"), (3, 1, "rollback")]
    assert prod["recorded"].all() and prod["at"].is_monotonic_increasing
    assert prod.iloc[1]["reason"].startswith("challenger rmse") and "better by" in prod.iloc[1]["reason"]
    assert prod.iloc[2]["reason"].startswith("forced: ")
    assert "undoes the move" in prod.iloc[3]["reason"] and "v2 -> v3" not in prod.iloc[3]["reason"]
    assert "v1 -> v3" in prod.iloc[4]["reason"]
    assert (prod["user"] != "").all() and (prod["host"] != "").all()
    chal = df[df["alias"] == "challenger"]
    assert chal["to_version"].tolist() == [1, 2, 3, 2]
    proc = scope.cli("models", "--history")
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.split()[2:3] == ["production"]]
    assert len(lines) == 5 and "v3 -> v1" in lines[-1] and "rollback" in lines[-1]

    # a move made in the MLflow UI shows as noticed, and is written down by the next windpipe move
    from mlflow import MlflowClient

    MlflowClient(scope.platform.tracking_uri).set_registered_model_alias(scope.model_name, "production", "2")
    last = history(scope.settings).iloc[-1]
    assert (last["action"], last["from_version"], last["to_version"], last["recorded"]) == ("outside", 1, 2, False)
    assert rollback(scope.settings).version == 1  # undoes the latest move to v2: the outside one, not the force
    prod = history(scope.settings).query("alias == 'production'")
    assert prod["action"].tolist()[-2:] == ["outside", "rollback"] and prod["recorded"].all()
    assert "noticed by rollback" in prod.iloc[-2]["reason"] and "v1 -> v2" in prod.iloc[-1]["reason"]


@pytest.mark.slow
def test_a_move_killed_halfway_is_in_the_history_exactly_when_it_happened(scope):
    from mlflow import MlflowClient

    from windpipe.models.history import history, recorded_move
    from windpipe.models.promotion import promote

    log_candidate(scope, scale=1.2)
    assert promote(scope.settings).version == 1
    log_candidate(scope, scale=1.0)
    promote(scope.settings, margin=0.9)  # v2 registered, production stays v1
    client = MlflowClient(scope.platform.tracking_uri)

    # the move fails: no entry, alias unchanged
    with pytest.raises(RuntimeError), recorded_move(client, scope.settings, "production", 2, "force", "test"):
        raise RuntimeError("the server went away")
    assert scope.snapshot()[1]["production"] == "1"
    assert history(scope.settings).query("alias == 'production'")["to_version"].tolist() == [1]

    def killed(reason: str, move_alias: bool) -> None:
        """A process that opens the record (and moves the alias) and is then killed with SIGKILL."""
        code = ("import os, signal\n"
                "from windpipe.settings import get_settings\n"
                "from windpipe.models.history import recorded_move\n"
                "from windpipe.tracking.client import client\n"
                "s = get_settings()\n"
                "c = client(s)\n"
                f"with recorded_move(c, s, 'production', 2, 'force', {reason!r}):\n"
                f"    if {move_alias}: c.set_registered_model_alias(s.model_name, 'production', '2')\n"
                "    os.kill(os.getpid(), signal.SIGKILL)\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert proc.returncode == -9, proc.stderr

    # killed after opening the record, before moving the alias: the move did not happen
    killed("killed early", move_alias=False)
    assert history(scope.settings).query("alias == 'production'")["to_version"].tolist() == [1]
    # killed after moving the alias, before closing the record: the move happened
    killed("killed late", move_alias=True)
    prod = history(scope.settings).query("alias == 'production'")
    assert prod["to_version"].tolist() == [1, 2] and prod.iloc[-1]["reason"] == "killed late"
    assert prod["action"].tolist() == ["first", "force"]  # not mistaken for an outside change

    # the next move settles both records for good: FAILED and FINISHED
    from windpipe.models.registry import rollback

    assert rollback(scope.settings).version == 1
    from windpipe import names

    exp = client.get_experiment_by_name(names.ALIAS_HISTORY_EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], f"tags.`{names.MOVE_MODEL_TAG}` = '{scope.model_name}'")
    by_reason = {r.data.tags[names.MOVE_REASON_TAG]: r.info.status for r in runs}
    assert by_reason["killed early"] == "FAILED" and by_reason["killed late"] == "FINISHED"
    assert by_reason["test"] == "FAILED"
    assert all(status in ("FINISHED", "FAILED") for status in by_reason.values())


@pytest.mark.slow
def test_bad_input_gives_clear_errors_and_changes_nothing(scope, tmp_path):
    # runs without a model / FAILED; an empty experiment; no registered model at all
    import mlflow

    no_model = log_candidate(scope, with_model=False)
    failed = log_candidate(scope, status="FAILED")
    other = Scope(scope.platform, f"empty_{new_id()[:8]}", scope.model_name)
    mlflow.create_experiment(other.experiment)
    before = scope.snapshot()
    out = tmp_path / "ctx"
    calls = {
        "no runs": lambda: other.cli("promote"),
        "no model": lambda: scope.cli("promote", "--run-id", no_model),
        "failed run": lambda: scope.cli("promote", "--run-id", failed),
        "unknown run": lambda: scope.cli("promote", "--run-id", new_id()),
        "unknown metric": lambda: scope.cli("promote", "--metric", "accuracy"),
        "negative margin": lambda: scope.cli("promote", "--margin", "-0.1"),
        "rollback": lambda: scope.cli("rollback"),
        "package": lambda: scope.cli("package", "--registry", "r.example.com", "--env", "dev", "--zone", "z1",
                                     "--out", str(out)),
        "models": lambda: scope.cli("models"),
    }
    with ThreadPoolExecutor(max_workers=3) as pool:
        procs = dict(zip(calls, pool.map(lambda f: f(), calls.values()), strict=True))
    expect = {
        "no runs": "Nothing to promote",
        "no model": "has no model",
        "failed run": "only finished runs",
        "unknown run": "There is no run",
        "unknown metric": "cannot score 'accuracy'",
        "negative margin": "margin must be",
        "rollback": "no production version",
        "package": "no production version to package",
    }
    for case, text in expect.items():
        proc = procs[case]
        assert proc.returncode == 1, (case, proc.stdout, proc.stderr)
        assert text in proc.stderr, (case, proc.stderr)
        assert proc.stderr.startswith("error: ") and "fix: " in proc.stderr, (case, proc.stderr)
        assert "Traceback" not in proc.stderr, case
    assert procs["models"].returncode == 0 and "no versions yet" in procs["models"].stdout
    assert scope.snapshot() == before == ([], None)
    assert not out.exists() and list(tmp_path.iterdir()) == []

    # the same through the Python API: WindpipeError, nothing changed
    from windpipe.models.promotion import promote
    from windpipe.models.registry import rollback

    with pytest.raises(WindpipeError, match="has no model"):
        promote(scope.settings, run_id=no_model)
    with pytest.raises(WindpipeError, match="no production version"):
        rollback(scope.settings)
    assert scope.snapshot() == before


@pytest.mark.slow
def test_the_same_work_again_is_not_a_new_version_and_forced_ping_pong_rolls_back_to_the_start(scope):
    """Runs with one cache key (the pipeline's: same step, code, params, inputs) are one model: promote reuses
    the version that holds it. Runs without a key keep one version each. Rollback after A, B, A, B ends."""
    from mlflow import MlflowClient

    from windpipe import names
    from windpipe.models.promotion import promote
    from windpipe.models.registry import rollback

    client = MlflowClient(scope.platform.tracking_uri)

    def rerun(key: str | None, scale: float) -> str:
        run_id = log_candidate(scope, scale=scale)
        if key:  # what the pipeline's runner tags each step run with
            client.set_tag(run_id, names.CACHE_KEY_TAG, key)
        return run_id

    good, worse = new_id(), new_id()
    a = rerun(good, 1.0)
    assert promote(scope.settings, run_id=a).version == 1
    assert _tags(scope, 1)[names.CACHE_KEY_TAG] == good  # copied onto the version
    again = rerun(good, 1.0)  # `windpipe pipeline run --force`: the same work once more
    res = promote(scope.settings, run_id=again)
    assert (res.promoted, res.version, res.production, res.run_id) == (False, 1, 1, a)
    assert res.note.startswith("v1 already holds this model (same step, code, params, inputs")
    assert "already holds this model and is production" in res.reason
    proc = scope.cli("promote", "--run-id", rerun(good, 1.0))
    assert proc.returncode == 0, proc.stderr
    assert "v1 already holds this model (same step, code, params, inputs" in proc.stdout
    assert scope.snapshot() == ([1], {"production": "1", "challenger": "1"})

    # other work: a version of its own; its rerun is judged as that version (here forced)
    b = rerun(worse, 1.3)
    assert (promote(scope.settings, run_id=b).version, scope.snapshot()[1]["production"]) == (2, "1")
    res = promote(scope.settings, run_id=rerun(worse, 1.3), force=True)
    assert (res.promoted, res.version, res.run_id) == (True, 2, b) and res.reason.startswith("forced: ")
    assert _tags(scope, 2)[names.RUN_ID_TAG] == b
    # a step run by hand has no key: one version per run, as before
    assert promote(scope.settings, run_id=rerun(None, 1.0), margin=0.9).version == 3
    assert scope.snapshot() == ([1, 2, 3], {"production": "2", "challenger": "3"})

    # forced back and forth (1 -> 2 above, then 2 -> 1 -> 2): rollbacks retrace it and end at the first
    for run_id in (a, b):
        assert promote(scope.settings, run_id=run_id, force=True).promoted
    assert [rollback(scope.settings).version for _ in range(3)] == [1, 2, 1]
    with pytest.raises(WindpipeError, match="first production version"):
        rollback(scope.settings)
    assert scope.snapshot() == ([1, 2, 3], {"production": "1", "challenger": "2"})


@pytest.mark.slow
def test_production_never_moves_to_a_version_whose_run_is_gone(scope):
    from mlflow import MlflowClient

    from windpipe.models.promotion import promote
    from windpipe.models.registry import check_promotable, rollback

    first = log_candidate(scope, scale=1.2)
    assert promote(scope.settings).version == 1
    log_candidate(scope, scale=1.0)
    assert promote(scope.settings).production == 2
    client = MlflowClient(scope.platform.tracking_uri)
    client.delete_run(first)
    before = scope.snapshot()
    with pytest.raises(WindpipeError, match="run behind .* version 1 is finished/deleted"):
        rollback(scope.settings)
    with pytest.raises(WindpipeError, match="does not exist"):
        check_promotable(client, scope.model_name, 99)
    assert scope.snapshot() == before and before[1]["production"] == "2"


@pytest.mark.slow
def test_two_promotions_at_once_take_turns_and_the_second_compares_with_the_first(scope, tmp_path):
    """The worse run's promotion holds the lock while the better one's starts: the second waits, then compares
    itself with the first's result. The history shows it: the second move starts where the first ended."""
    from mlflow import MlflowClient

    worse = log_candidate(scope, scale=1.3)
    better = log_candidate(scope, scale=1.0)
    env = {**scope.platform.env, **scope.env}
    first, second = race_promotions(tmp_path, (env, worse), (env, better))
    assert production_moves(scope) == [(None, 1), (1, 2)]  # taking turns: the second move starts at the first's end
    assert "waiting for the registry lock" in second, second
    assert "promoted: " in first and "no production version yet" in first, first
    # the second saw the first's result: production v1 (the worse run) is what it was compared with
    assert "production v1 " in second and f"promoted: {scope.model_name}@production -> v2 (was v1)" in second, second
    prod = MlflowClient(scope.platform.tracking_uri).get_model_version_by_alias(scope.model_name, "production")
    assert prod.run_id == better and prod.tags["windpipe.run_id"] == better


# ------------------------------------------------------------------- on the team stack: one lock, many machines


@pytest.fixture
def team_scope(team_platform, monkeypatch):
    """A private experiment and model on the session's team platform (PostgreSQL, S3, basic auth)."""
    point_at(team_platform, monkeypatch)
    return make_scope(team_platform, monkeypatch)


@pytest.mark.slow
def test_promotions_from_two_state_folders_take_turns_on_the_team_registry(team_scope, tmp_path):
    """Two machines (two state folders, nothing shared but the network) promote against the team registry at the
    same moment, three rounds, the worse candidate first: the lock both see (the team stack's PostgreSQL, its
    `locks` login) makes the second wait and compare itself with the first's result. The history chains and
    production ends on the best model; with a lock per state folder the second moved production from the
    version the first was replacing (and the worse one could end in production)."""
    from mlflow import MlflowClient

    scope, p = team_scope, team_scope.platform
    lock_url = p.settings.effective_lock_url  # what another machine sets as WINDPIPE_LOCK_URL
    machines = [{**p.env, **scope.env, "WINDPIPE_HOME": str(tmp_path / f"machine{i}"), "WINDPIPE_LOCK_URL": lock_url}
                for i in (1, 2)]
    best, outputs = None, []
    for worse, better in ((1.8, 1.6), (1.5, 1.4), (1.3, 1.2)):  # (the fit is best near 1.05)
        first_run, best = log_candidate(scope, scale=worse), log_candidate(scope, scale=better)
        outputs.append(race_promotions(tmp_path, (machines[0], first_run), (machines[1], best)))
    prod = MlflowClient(p.tracking_uri).get_model_version_by_alias(scope.model_name, "production")
    assert prod.run_id == best and prod.version == "6"
    # what each promotion compared itself with is where the move before it ended, and the history says the same
    decisions = sorted((decided(out) for pair in outputs for out in pair), key=lambda d: d[1] if d else 0)
    moves = production_moves(scope)
    assert chained(decisions) and decisions == moves and len(moves) == 6, (decisions, moves)
    for _first, second in outputs:
        assert f"waiting for the lock 'registry:{scope.model_name}'" in second, second


@pytest.mark.slow
def test_a_promotion_killed_or_stuck_holding_the_team_lock(team_scope, tmp_path):
    """kill -9 of a promotion holding the team's lock: the next one proceeds at once (its session closed) and
    says so. A holder stuck past its lease: the next one waits for the lease, ends the holder's session, proceeds
    and says so; the stuck one, resumed, finds it lost the lock and changes nothing."""
    from windpipe.models.promotion import promote

    scope, p = team_scope, team_scope.platform
    env = {**p.env, **scope.env}
    first, killed, after_kill, stuck, after_stuck = (log_candidate(scope, scale=s) for s in (1.5, 1.4, 1.3, 1.35, 1.1))
    assert promote(scope.settings, run_id=first).version == 1

    pause = Paused(tmp_path, "promote:locked")
    holder = promote_in_background(env, killed, tmp_path / "killed.out", pause.env)
    wait_paused(holder, Path(str(pause.release) + ".paused"), tmp_path / "killed.out")
    kill9(holder.pid)
    nxt = scope.cli("promote", "--run-id", after_kill)
    assert nxt.returncode == 0, nxt.stdout + nxt.stderr
    assert "ended without releasing it (killed?)" in nxt.stdout and "-> v2 (was v1)" in nxt.stdout, nxt.stdout

    pause = Paused(tmp_path, "promote:locked")
    out = tmp_path / "stuck.out"
    holder = promote_in_background({**env, "WINDPIPE_REGISTRY_LEASE": "3"}, stuck, out, pause.env)
    try:
        wait_paused(holder, Path(str(pause.release) + ".paused"), out)
        nxt = scope.cli("promote", "--run-id", after_stuck)
    finally:
        pause.go()
        holder.wait(timeout=120)
    assert nxt.returncode == 0, nxt.stdout + nxt.stderr
    assert "past the end of its lease" in nxt.stdout and "-> v3 (was v2)" in nxt.stdout, nxt.stdout
    said = out.read_text()
    assert holder.returncode == 1 and "lost the lock" in said and "Traceback" not in said, said
    assert scope.snapshot() == ([1, 2, 3], {"production": "3", "challenger": "3"})  # the stuck one registered nothing
    assert production_moves(scope) == [(None, 1), (1, 2), (2, 3)]


@pytest.mark.slow
def test_notebooks_run_headless(scope, tmp_path, DATE):
    from windpipe.models.promotion import promote
    from windpipe.workbench.notebooks import run_notebook

    log_candidate(scope, scale=1.1)
    log_candidate(scope, scale=1.0)
    assert promote(scope.settings).promoted
    # a Keras-like run with per-epoch history, for the learning-curve cell
    import mlflow

    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name(scope.experiment).experiment_id,
                          tags={"windpipe.model_family": "keras", "windpipe.model_uri": "models:/m-keras"}):
        mlflow.log_metric("rmse", 9.0)
        for epoch in range(3):
            mlflow.log_metrics({"loss": 3.0 - epoch, "val_loss": 3.5 - epoch}, step=epoch)
    env = {**scope.platform.env, **scope.env}
    for name in ("compare_runs.ipynb", "get_prod_model.ipynb"):
        nb = run_notebook(REPO / "notebooks" / name, cwd=tmp_path, env=env, out=tmp_path / name, timeout=300)
        assert "error" not in [o.get("output_type") for c in nb.cells for o in c.get("outputs", [])], name
        last = json.dumps(nb.cells[-1].get("outputs", []))
        expected = "Keras learning curves" if name == "compare_runs.ipynb" else "solar_GW_predicted"
        assert expected in last, (name, last[:500])
    outputs = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert f"{scope.model_name}_v1_{DATE}" in outputs and "solar_GW" in outputs
    assert Path(tmp_path / "get_prod_model.ipynb").exists()


def test_registry_lock_is_exclusive(tmp_path):
    import threading

    from windpipe.models.registry import registry_lock
    from windpipe.settings import Settings

    settings = Settings(home=tmp_path)
    held, release, errors = threading.Event(), threading.Event(), []

    def holder():
        with registry_lock(settings):
            held.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(30)
    try:
        with pytest.raises(WindpipeError, match="Another promotion"):
            with registry_lock(settings, timeout=0.3):
                errors.append("entered while held")
    finally:
        release.set()
        t.join()
    assert errors == []
    with registry_lock(settings, timeout=5):  # free again
        pass


@pytest.mark.slow
def test_the_pipeline_summary_says_what_the_promote_step_did(scope):
    """A promote step that did not promote: its run has no promoted_version, and the pipeline's summary says
    `not promoted v2` (it said promoted_version=2)."""
    import io
    from dataclasses import dataclass, field

    import mlflow
    from rich.console import Console

    from windpipe.pipeline.interfaces import load_interfaces
    from windpipe.pipeline.progress import Progress
    from windpipe.steps.promote import main

    @dataclass
    class Finished:  # what the launcher reports of a step's run (windpipe.pipeline.progress.Outcome)
        run_id: str
        tags: dict
        metrics: dict
        key_metric: str | None
        reused: bool = False
        seconds: float = 1.0
        extra: dict = field(default_factory=dict)

        @property
        def metric_value(self) -> float | None:
            return self.metrics.get(self.key_metric) if self.key_metric else None

    key = next(s for s in load_interfaces() if s.name == "promote").key_metric
    shown = {}
    for name, scale in (("better", 1.0), ("worse", 1.6)):  # the first is promoted, the second is not
        run_id = log_candidate(scope, scale=scale)
        main(f"runs:/{run_id}/model", "rmse", "0")
        run = mlflow.MlflowClient().search_runs([mlflow.get_experiment_by_name(scope.experiment).experiment_id],
                                                "tags.`windpipe.step` = 'promote'", order_by=["start_time DESC"])[0]
        out = io.StringIO()
        progress = Progress({"promote": "promote:main"}, Console(file=out, width=200), live=False)
        progress.finished("promote", Finished(run.info.run_id, run.data.tags, run.data.metrics, key))
        Console(file=out, width=200).print(progress.summary("pipeline run"))
        shown[name] = (out.getvalue(), run.data.metrics)
    assert "promoted v1" in shown["better"][0] and shown["better"][1]["promoted_version"] == 1
    assert "not promoted v2" in shown["worse"][0] and "promoted_version" not in shown["worse"][0]
    assert "promoted_version" not in shown["worse"][1]
