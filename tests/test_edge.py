"""Past one machine: Airflow's EdgeExecutor, two workers that share nothing with the central machine but the network.

One cluster for the module, simulated on this machine:

- central: the team stack (PostgreSQL, S3, MLflow with basic auth) and `windpipe airflow up --executor edge`, all
  bound to a bridge address (not loopback), its state folder mode 0700 (root's);
- two workers, each a different Unix user, in its own network namespace (a veth pair on the bridge: it reaches
  the central services by that address; loopback there is its own) with its own host name, started from its own
  `git clone` of HEAD with its own state folder, the installed .venv and .venv-airflow shared read-only (like an
  image both machines were built from), its raw data at the same path as the other's (a private copy bind-mounted
  in its own mount namespace), and nothing in its environment but URLs and logins.

Without root or iproute2 the workers run on loopback (the same checks, less isolation).
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import REPO, Platform, point_at, settings_from, team_env, trainers

AIRFLOW_VENV = Path(os.environ.get("WINDPIPE_AIRFLOW_VENV", REPO / ".venv-airflow"))
MAIN_BIN = Path(sys.executable).parent
HEAVY, DEFAULT = "heavy", "default"
TRAINING = "windpipe_training"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (AIRFLOW_VENV / "bin" / "airflow").exists(), reason="`make airflow` first"),
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser") or not shutil.which("useradd"),
                       reason="the workers run as other Unix users: root only"),
]


def sh(*argv: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    assert not check or proc.returncode == 0, f"{' '.join(argv)}: {proc.stdout}{proc.stderr}"
    return proc


class Network:
    """A bridge with the central address and one network namespace per worker (a veth pair each)."""

    def __init__(self, n: int) -> None:
        tag = f"{os.getpid() % 10000}{random.randint(0, 99)}"
        self.bridge, self.spaces, self.links = f"wpbr{tag}", [f"wpns{tag}{i}" for i in range(n)], []
        used = sh("ip", "-o", "addr").stdout
        while True:
            net = f"10.{random.randint(100, 250)}.{random.randint(0, 250)}"
            if f" {net}." not in used:
                break
        self.central = f"{net}.1"
        self.addresses = [f"{net}.{i + 2}" for i in range(n)]
        try:
            sh("ip", "link", "add", self.bridge, "type", "bridge")
            sh("ip", "addr", "add", f"{self.central}/24", "dev", self.bridge)
            sh("ip", "link", "set", self.bridge, "up")
            for i, ns in enumerate(self.spaces):
                host, inner = f"wpvh{tag}{i}", f"wpvw{tag}{i}"
                sh("ip", "netns", "add", ns)
                sh("ip", "link", "add", host, "type", "veth", "peer", "name", inner)
                self.links.append(host)
                sh("ip", "link", "set", inner, "netns", ns)
                sh("ip", "link", "set", host, "master", self.bridge, "up")
                sh("ip", "-n", ns, "addr", "add", f"{self.addresses[i]}/24", "dev", inner)
                sh("ip", "-n", ns, "link", "set", inner, "up")
                sh("ip", "-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        for ns in self.spaces:
            sh("ip", "netns", "del", ns, check=False)
        for link in [*self.links, self.bridge]:
            sh("ip", "link", "del", link, check=False)


def make_network(n: int) -> Network | None:
    if not shutil.which("ip"):
        return None
    try:
        return Network(n)
    except AssertionError:  # no network namespaces here (a container without CAP_NET_ADMIN)
        return None


@dataclass
class Worker:
    """One worker machine: a Unix user, a folder only it can read, its own clone, state folder and environment."""

    name: str
    user: str
    folder: Path
    env: dict[str, str]
    netns: str | None
    raw_mount: Path

    @property
    def home(self) -> Path:
        return Path(self.env["WINDPIPE_HOME"])

    @property
    def clone(self) -> Path:
        return self.folder / "checkout"

    def run(self, *args: str, extra_env: dict[str, str] | None = None, timeout: float = 300,
            ) -> subprocess.CompletedProcess:
        """`windpipe ARGS` on this worker: its network namespace, host name, mount namespace (its raw data at the
        shared path), its user, its environment, from its own clone."""
        q = shlex.quote
        script = [f"hostname {q(self.name)}", f"mount --bind {q(str(self.folder / 'raw'))} {q(str(self.raw_mount))}"]
        blocked = _blocked_parent(Path(sys.base_prefix).resolve())
        if blocked:  # the image's interpreter lives below a folder other users may not pass (/root, say): in this
            # mount namespace that folder is an empty tmpfs holding only the interpreter's folder
            parent, child = (q(str(x)) for x in blocked)
            stage = q(str(self.folder / ".image"))
            script += [f"mkdir -p {stage}", f"mount --bind {child} {stage}",
                       f"mount -t tmpfs -o mode=0755 tmpfs {parent}", f"mkdir -p {child}",
                       f"mount --bind {stage} {child}"]
        script.append(f'exec {shutil.which("runuser")} -p -u {q(self.user)} -- "$@"')
        argv = ["unshare", "--uts", "--mount", "sh", "-c", " && ".join(script), "worker",
                str(MAIN_BIN / "python"), "-m", "windpipe", *args]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return subprocess.run(argv, env={**self.env, **(extra_env or {})}, capture_output=True, text=True,
                              timeout=timeout, cwd=self.clone)

    def start(self, queues: str, **extra_env: str) -> None:
        proc = self.run("airflow", "worker", "--api-url", self.env["WINDPIPE_AIRFLOW_API_URL"], "--queues", queues,
                        "--concurrency", "2", extra_env=extra_env, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def pids(self) -> list[int]:
        import psutil

        uid = int(sh("id", "-u", self.user).stdout)
        return [p.pid for p in psutil.process_iter(["uids", "status"]) if p.info["uids"]
                and p.info["uids"].real == uid and p.info["status"] != psutil.STATUS_ZOMBIE]

    def kill_machine(self) -> None:
        """kill -9 of everything this worker runs: the machine is gone."""
        deadline = time.monotonic() + 30
        while (pids := self.pids()) and time.monotonic() < deadline:  # (a process may fork while we look)
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)


@dataclass
class Cluster:
    central: Platform
    workers: list[Worker]
    network: Network | None
    raw: Path  # the raw data's path, the same on every worker (each has its own copy there)

    def token(self) -> str:
        from windpipe.stack import airflow_server

        return airflow_server.token(self.central.settings)

    def api(self, path: str) -> dict:
        req = urllib.request.Request(f"{self.central.settings.airflow_url}/api/v2/{path}",
                                     headers={"Authorization": f"Bearer {self.token()}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def trigger(self, dag_id: str, conf: dict) -> tuple[str, str]:
        """Trigger a DAG run and wait for its end: (run id, state)."""
        from windpipe.stack import airflow_server

        s, token = self.central.settings, self.token()
        airflow_server.wait_for_dag(s, dag_id, token)
        run_id = airflow_server.trigger(s, dag_id, conf, token)
        return run_id, airflow_server.wait_for_run(s, dag_id, run_id, token, timeout=1500)

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict]:
        from urllib.parse import quote

        found = self.api(f"dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances")["task_instances"]
        return {t["task_id"] + (f"[{t['map_index']}]" if t["map_index"] >= 0 else ""): t for t in found}

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        from urllib.parse import quote

        return json.dumps(self.api(f"dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/logs/"
                                   f"{try_number}"))


def _blocked_parent(path: Path) -> tuple[Path, Path] | None:
    """(the first folder above `path` that other users may not pass, its child on the way to `path`), or None."""
    for parent in reversed(path.parents):
        if parent != Path("/") and not parent.stat().st_mode & 0o001:
            return parent, Path(*path.parts[:len(parent.parts) + 1])
    return None


def _user(name: str, home: Path) -> str:
    if sh("id", "-u", name, check=False).returncode != 0:
        sh("useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/usr/sbin/nologin", name)
    return name


def _clone(dest: Path) -> None:
    commit = sh("git", "-C", str(REPO), "rev-parse", "HEAD").stdout.strip()
    sh("git", "clone", "--quiet", "--no-checkout", str(REPO), str(dest))
    sh("git", "-C", str(dest), "checkout", "--quiet", commit)


@pytest.fixture(scope="module")
def cluster(raw_dir: Path) -> Iterator[Cluster]:
    from windpipe.stack import postgres, s3, services, team
    from windpipe.stack.airflow_server import worker_secret_file
    from windpipe.stack.procs import free_port

    network = make_network(2)
    host = network.central if network else "127.0.0.1"
    root = Path(tempfile.mkdtemp(prefix="windpipe-edge-"))
    root.chmod(0o755)  # (the workers' folders are below; the central state folder is 0700)
    home = root / "central"
    home.mkdir(mode=0o700)
    env = team_env(home)
    mlflow_port, airflow_port = env["WINDPIPE_MLFLOW_PORT"], str(free_port())
    env.update({"WINDPIPE_HOST": host, "MLFLOW_TRACKING_URI": f"http://{host}:{mlflow_port}",
                "WINDPIPE_AIRFLOW_PORT": airflow_port, "WINDPIPE_AIRFLOW_VENV": str(AIRFLOW_VENV)})
    settings = settings_from(env)
    central = Platform(settings, env)
    raw = root / "raw"  # an empty mount point: each worker binds its own copy of the data here
    raw.mkdir()
    workers: list[Worker] = []
    try:
        services.up(settings, say=lambda _m: None)
        user, password = team.admin_credentials(settings)
        env.update({"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password})
        up = central.windpipe("airflow", "up", "--executor", "edge", timeout=900)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert home.stat().st_mode & 0o007 == 0  # the workers' users cannot even pass the central state folder
        secret = worker_secret_file(settings).read_text()
        key_id, key = s3.keys(settings)
        for i, letter in enumerate("ab"):
            folder = root / f"worker-{letter}"
            folder.mkdir(mode=0o700)
            name = _user(f"wpedge{letter}", folder)
            _clone(folder / "checkout")
            shutil.copytree(raw_dir, folder / "raw")
            (folder / "home").mkdir()
            sh("chown", "-R", f"{name}:{name}", str(folder))
            wenv = {  # URLs and logins; where its installed environments are; nothing of the central machine
                "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(folder), "LANG": "C.UTF-8",
                "PYTHONPATH": str(folder / "checkout"),  # this clone's windpipe, not the image's editable one
                "WINDPIPE_HOME": str(folder / "home"), "WINDPIPE_ENV_FILE": str(folder / "no.env"),
                "WINDPIPE_BIN_DIR": str(MAIN_BIN), "WINDPIPE_AIRFLOW_VENV": str(AIRFLOW_VENV),
                "WINDPIPE_AIRFLOW_API_URL": f"http://{host}:{airflow_port}",
                "WINDPIPE_AIRFLOW_WORKER_SECRET": secret,
                "MLFLOW_TRACKING_URI": f"http://{host}:{mlflow_port}",
                "MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password,
                # the prediction DAG: the inbox's S3 store and the central data marts (their own logins)
                "WINDPIPE_S3_ENDPOINT_URL": f"http://{host}:{env['WINDPIPE_S3_PORT']}",
                "WINDPIPE_S3_ACCESS_KEY_ID": key_id, "WINDPIPE_S3_SECRET_ACCESS_KEY": key,
                "WINDPIPE_MARTS_URL": f"postgresql+psycopg://marts@{host}:{env['WINDPIPE_PG_PORT']}/marts",
                "PGPASSWORD": settings.paths.secret_file(postgres.MARTS_PASSWORD).read_text().strip(),
            }
            workers.append(Worker(f"edge-{letter}", name, folder, wenv, network.spaces[i] if network else None, raw))
        yield Cluster(central, workers, network, raw)
    finally:
        for w in workers:
            w.run("airflow", "down", timeout=120)
            w.kill_machine()
        central.windpipe("airflow", "down", timeout=300)
        services.down(settings, say=lambda _m: None)
        if network:
            network.remove()
        shutil.rmtree(root, ignore_errors=True)


def _runs(p: Platform, filter_string: str = "") -> list:
    import mlflow

    mlflow.set_tracking_uri(p.tracking_uri)
    return mlflow.search_runs(experiment_names=[p.settings.experiment], filter_string=filter_string,
                              output_format="list", order_by=["start_time DESC"])


def test_a_worker_refuses_to_start_on_a_wrong_url_login_or_environment(cluster):
    """Each of these stops at start with a clear message (exit 1, no traceback), and no worker runs."""
    w = cluster.workers[0]
    url = w.env["WINDPIPE_AIRFLOW_API_URL"]
    wrong_port = url.rsplit(":", 1)[0] + ":9"
    cases = [
        (["--api-url", wrong_port], {}, "does not answer"),
        (["--api-url", w.env["MLFLOW_TRACKING_URI"]], {}, "not as Airflow's API server"),
        ([], {"WINDPIPE_AIRFLOW_WORKER_SECRET": "not-the-secret"}, "refused the worker's login"),
        ([], {"MLFLOW_TRACKING_PASSWORD": "wrong"}, "could not log in to the tracking server"),
        ([], {"WINDPIPE_BIN_DIR": str(w.folder / "no-venv" / "bin")}, "has no windpipe or mlflow"),
    ]
    for args, env, message in cases:
        proc = w.run("airflow", "worker", "--queues", DEFAULT, *args, extra_env=env, timeout=300)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1 and message in out and "Traceback" not in out, (args, env, out[-3000:])
        assert "fix:" in out and "not-the-secret" not in out
        assert not (w.home / "run" / "airflow-worker.pid").exists()  # nothing left running


def test_training_runs_across_both_workers_survives_a_killed_one_and_reuses_every_step(cluster, monkeypatch):
    """keras on one worker's queue, the rest on the other's; the worker running compare is killed with kill -9 in the
    step: the task is retried on the other worker, the DAG run succeeds with a production alias, no run is left
    RUNNING. Run again (both workers back): every step is reused."""
    import mlflow

    p = point_at(cluster.central, monkeypatch)
    a, b = cluster.workers
    release = b.folder / "release"
    a.start(HEAVY)
    b.start(DEFAULT, WINDPIPE_TEST_PAUSE_AT=f"step:compare@{release}")
    conf = {"raw": str(cluster.raw), "quick": True}

    from windpipe.stack import airflow_server

    s = p.settings
    token = cluster.token()
    airflow_server.wait_for_dag(s, TRAINING, token)
    run_id = airflow_server.trigger(s, TRAINING, conf, token)
    paused = Path(f"{release}.paused")
    deadline = time.monotonic() + 900
    while not paused.exists():
        assert time.monotonic() < deadline, "the compare step never started on worker b"
        assert airflow_server.run_state(s, TRAINING, run_id, token) not in ("failed", "success")
        time.sleep(2)
    a.run("airflow", "down")  # worker a takes the default queue too from now on (how a worker is reconfigured)
    a.start(f"{HEAVY},{DEFAULT}")
    b.kill_machine()  # in the middle of compare
    assert b.pids() == []
    state = airflow_server.wait_for_run(s, TRAINING, run_id, cluster.token(), timeout=1200)
    tis = cluster.task_instances(TRAINING, run_id)
    assert state == "success", {k: (v["state"], v["hostname"]) for k, v in tis.items()}

    assert tis["keras"]["queue"] == HEAVY and tis["keras"]["hostname"] == a.name
    for task in ("open", "process", *(t for t in trainers() if t != "keras")):
        assert tis[task]["queue"] == DEFAULT and tis[task]["hostname"] == b.name, (task, tis[task])
    assert tis["compare"]["try_number"] == 2 and tis["compare"]["hostname"] == a.name  # retried on the other one
    assert tis["promote"]["hostname"] == a.name
    first = cluster.task_log(TRAINING, run_id, "compare", 1)
    assert b.name in first or tis["compare"]["try_number"] == 2

    # the dead attempt's run ended KILLED, naming what happened; nothing is left RUNNING
    assert _runs(p, "attributes.status = 'RUNNING'") == []
    killed = _runs(p, "attributes.status = 'KILLED' and tags.`windpipe.step` = 'compare'")
    assert len(killed) == 1 and "earlier attempt of the task compare" in killed[0].data.tags["windpipe.failure_reason"]
    parent = _runs(p, "tags.`windpipe.step` = 'pipeline'")[0]
    assert parent.info.status == "FINISHED"
    steps = {k.removeprefix("windpipe.pipeline."): v.split(" ") for k, v in parent.data.tags.items()
             if k.startswith("windpipe.pipeline.")}
    assert {k: v[1] for k, v in steps.items()} == {s_: "ran" for s_ in ("process", *trainers(), "compare", "promote")}
    # each step ran from its worker's own clone
    for step, (rid, _) in steps.items():
        source = mlflow.get_run(rid).data.tags["mlflow.source.name"]
        worker = a if step in ("keras", "compare", "promote") else b
        assert source == f"file://{worker.clone}#projects/{step}", (step, source)
    version = mlflow.MlflowClient().get_model_version_by_alias(s.model_name, "production")
    assert version.run_id == mlflow.get_run(steps["compare"][0]).data.tags["windpipe.best_run_id"]

    # both workers again (b back from the dead, without the pause): every step reused
    b.run("airflow", "down")  # (its stale pid file)
    b.start(DEFAULT)
    again, state = cluster.trigger(TRAINING, conf)
    assert state == "success"
    second = _runs(p, "tags.`windpipe.step` = 'pipeline'")[0]
    assert second.info.run_id != parent.info.run_id
    assert {k.removeprefix("windpipe.pipeline."): v.split(" ")[:2] for k, v in second.data.tags.items()
            if k.startswith("windpipe.pipeline.")} == {k: [v[0], "reused"] for k, v in steps.items()}
    hosts = {t["hostname"] for t in cluster.task_instances(TRAINING, again).values()}
    assert hosts == {a.name, b.name} or hosts <= {a.name, b.name}


def test_the_prediction_dag_refuses_an_inbox_its_workers_cannot_read(cluster, monkeypatch):
    """The inbox is a folder in the central state folder (no other user passes it): the first task, on a worker,
    fails with the message and the fix, the DAG run fails (no retry), the file stays where it was."""
    p = point_at(cluster.central, monkeypatch)
    for w in cluster.workers:
        if not (w.home / "run" / "airflow-worker.pid").exists():
            w.start(DEFAULT)
    box = p.home / "inbox"
    box.mkdir(exist_ok=True)
    from tests.models import tiny_processed
    from windpipe.names import FEATURES, TIMESTAMP

    tiny_processed(24)[[TIMESTAMP, *FEATURES]].to_parquet(box / "new.parquet", index=False)
    run_id, state = cluster.trigger("windpipe_prediction", {"inbox": str(box)})
    assert state == "failed"
    tis = cluster.task_instances("windpipe_prediction", run_id)
    assert tis["open"]["state"] == "failed" and tis["open"]["try_number"] == 1, tis["open"]
    log = cluster.task_log("windpipe_prediction", run_id, "open", 1)
    assert f"The prediction inbox {box} is not a folder the Airflow worker" in log, log[-3000:]
    assert "every worker reads" in log
    assert (box / "new.parquet").exists() and not (box / "done").exists()


def test_the_prediction_dag_scores_an_s3_inbox_across_both_workers_into_postgresql(cluster, monkeypatch):
    """The inbox an S3 prefix both workers reach by its URI: four files, each scored once by one of the workers, the
    batches in the central PostgreSQL marts, the objects in done/."""
    import mlflow

    from tests.models import log_registered_model, tiny_processed
    from windpipe.marts import queries, tables
    from windpipe.names import FEATURES, TIMESTAMP
    from windpipe.stack import objects, s3

    p = point_at(cluster.central, monkeypatch)
    a, b = cluster.workers
    for w, queues in ((a, f"{HEAVY},{DEFAULT}"), (b, DEFAULT)):
        if not (w.home / "run" / "airflow-worker.pid").exists():
            w.start(queues)
    try:
        mlflow.MlflowClient().get_model_version_by_alias(p.settings.model_name, "production")
    except Exception:  # (this test alone: the training test made none)
        log_registered_model(p, tmp_dir=cluster.raw.parent)
    prefix = f"s3://{p.settings.team.s3_bucket}/inbox-edge/"
    client = s3.client(p.settings)
    data = tiny_processed(96)[[TIMESTAMP, *FEATURES]]
    names = [f"part{i}.parquet" for i in range(4)]
    for i, name in enumerate(names):
        client.put_object(Bucket=p.settings.team.s3_bucket, Key=objects.split(prefix + name)[1],
                          Body=data.iloc[i * 24:(i + 1) * 24].to_parquet(index=False))
    engine = tables.get_engine(p.settings.effective_marts_url)
    before = set(queries.latest_batches(engine, limit=1000).id)
    run_id, state = cluster.trigger("windpipe_prediction", {"inbox": prefix})
    tis = cluster.task_instances("windpipe_prediction", run_id)
    assert state == "success", {k: (v["state"], v["hostname"]) for k, v in tis.items()}
    predicts = {k: v for k, v in tis.items() if k.startswith("predict[")}
    assert len(predicts) == 4 and {v["state"] for v in predicts.values()} == {"success"}
    assert {v["hostname"] for v in tis.values() if v["hostname"]} == {a.name, b.name}
    batches = queries.latest_batches(engine, limit=1000)
    new = batches[~batches.id.isin(before)]
    assert sorted(new.row_count) == [24] * 4 and set(new.status) == {"complete"}
    done = {e.name for e in objects.listing(prefix + "done/", p.settings)}
    assert set(names) <= done and not [e for e in objects.listing(prefix, p.settings) if e.name in names]
