"""Serving a model with plain `mlflow models serve` (a pinned version; `windpipe serve` follows an alias:
`windpipe.deploy.follow`), and the client side of both.

`serve_command` builds the command, `start` launches it and waits until `/ping` answers,
`request_predictions(url, df)` posts a `dataframe_split` payload (MLflow 3 refuses `pandas-split`),
`Load` sends a bounded load of concurrent requests and records every answer.

A model takes its natural inputs: utc_timestamp and the four weather columns (it derives the rest
itself). `input_spec` reads a model's input columns from its MLmodel file; `request_predictions(url, df,
columns)` sends them (times as naive UTC ISO strings: MLflow's datetime type takes no time zone), and
`curl_example` writes them out. A model logged before the natural inputs wants its time columns
(hour_sin, ..., trend) in the payload: the same two functions derive them (as
windpipe.models.loading.predict does), so old versions still serve.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from windpipe import names
from windpipe.errors import WindpipeError
from windpipe.models import loading
from windpipe.names import FEATURES, TARGETS
from windpipe.settings import Settings
from windpipe.stack.procs import Service, stop_child


def default_model_uri(settings: Settings) -> str:
    return names.alias_uri(settings.model_name)


def check_model_uri(settings: Settings, model_uri: str) -> None:
    """The model must resolve (an alias must exist), else a clear error naming the fix."""
    loading.resolve(model_uri, settings)


def serve_command(model_uri: str, port: int, host: str = "127.0.0.1", env_manager: str = "local",
                  workers: int = 1) -> list[str]:
    """`mlflow models serve ...` for this Python (its uvicorn; DESIGN fact 5)."""
    return [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "-h", host, "-p", str(port),
            "--env-manager", env_manager, "-w", str(workers)]


def serve_env(settings: Settings) -> dict[str, str]:
    """The server's environment: the tracking URI (models:/ resolves there) and this venv first on PATH."""
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = settings.effective_tracking_uri
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def ping(url: str, timeout: float = 2.0) -> None:
    """Raise WindpipeError unless the scoring server answers /ping."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/ping", timeout=timeout) as resp:
            if resp.status == 200:
                return
            raise WindpipeError(f"The model server at {url} answered /ping with HTTP {resp.status}.")
    except (urllib.error.URLError, OSError) as exc:
        raise WindpipeError(f"The model server at {url} does not answer ({getattr(exc, 'reason', exc)}).",
                            "start it: `windpipe serve`") from None


def service(settings: Settings, port: int, model_uri: str, log: Path | None = None) -> Service:
    """`mlflow models serve` of `model_uri` on 127.0.0.1:`port`, a child of this process (no pid file), checked
    by its /ping."""
    url = f"http://{settings.host}:{port}"

    def check() -> str:
        ping(url)
        return "ping ok"

    return Service("model", url, check, host=settings.host, port=port,
                   command=lambda: serve_command(model_uri, port, settings.host), env=lambda: serve_env(settings),
                   log=log, title=f"the model server at {url}", port_fix="pass --port <another>",
                   exit_fix="check the model URI and that the tracking server runs (`windpipe status`)",
                   timeout=max(settings.startup_timeout, 120.0))


def start(settings: Settings, port: int, model_uri: str | None = None, log: Path | None = None,
          timeout: float | None = None, stdout: object = None) -> tuple[subprocess.Popen, str]:
    """Check the model exists, start `mlflow models serve` on 127.0.0.1:`port`, wait for /ping.

    Returns (process, url). The caller stops the process (`stop`).
    """
    model_uri = model_uri or default_model_uri(settings)
    check_model_uri(settings, model_uri)
    svc = service(settings, port, model_uri, log)
    proc = svc.spawn(stdout)
    try:
        svc.wait(lambda: proc.poll() is None, timeout)
    except BaseException:
        stop(proc)
        raise
    return proc, svc.url


def stop(proc: subprocess.Popen) -> None:
    """Stop the server and its workers (its own process group)."""
    stop_child(proc)


def input_spec(settings: Settings, model_uri: str) -> tuple[list[str], bool]:
    """The served model's input columns in order, and whether it takes a tensor (Keras): from its MLmodel file."""
    from mlflow.models import Model

    ref = loading.resolve(model_uri, settings)
    files = loading.model_files(ref, settings)
    if files is None:  # not a pinned registered version: MLflow fetches it
        model = loading.load(ref, settings)
        columns, schema = loading.signature_columns(model), model.metadata.get_input_schema()
    else:
        columns = loading.file_signature_columns(files, ref)
        schema = Model.load(str(Path(files) / "MLmodel")).get_input_schema()
    return list(columns), bool(schema is not None and schema.is_tensor_spec())


def payload(df: pd.DataFrame, tensor: bool = False) -> dict:
    """The scoring payload MLflow 3 accepts: `dataframe_split` (a tensor model: `inputs`, rows of numbers).
    Times are written as ISO strings without a zone (naive UTC, as MLflow's datetime type wants them)."""
    if tensor:
        return {"inputs": df.to_numpy(dtype="float64").tolist()}
    times = [c for c in df.columns if pd.api.types.is_datetime64_any_dtype(df[c])]
    if times:
        df = df.assign(**{c: pd.to_datetime(df[c], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S") for c in times})
    split = json.loads(df.to_json(orient="split", index=False))
    return {"dataframe_split": {"columns": split["columns"], "data": split["data"]}}


def request_predictions(url: str, df: pd.DataFrame, columns: list[str] | None = None, tensor: bool = False,
                        timeout: float = 60.0) -> pd.DataFrame:
    """POST `df` to `<url>/invocations`; return the predictions as a frame (one column per target).

    `columns` are the model's input columns (`input_spec`): utc_timestamp and the weather for a model with
    natural inputs (df's utc_timestamp column or DatetimeIndex); the time columns of an older model are
    derived from it. Without them: the FEATURES df has.
    """
    if columns is not None:
        from windpipe.training.features import model_input

        body = payload(model_input(df, columns), tensor)
    else:
        body = payload(df[[c for c in FEATURES if c in df.columns] or list(df.columns)])
    req = urllib.request.Request(f"{url.rstrip('/')}/invocations", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise WindpipeError(f"The model server refused the request (HTTP {exc.code}): {refusal(exc.read())}",
                            f"send the columns {', '.join(columns or FEATURES)}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise WindpipeError(f"The model server at {url} does not answer ({exc}).",
                            "start it: `windpipe serve`") from None
    preds = body.get("predictions", body) if isinstance(body, dict) else body
    frame = pd.DataFrame(preds)
    if frame.shape[1] == len(TARGETS) and list(frame.columns) == list(range(len(TARGETS))):
        frame.columns = TARGETS
    return frame


def refusal(body: bytes, limit: int = 500) -> str:
    """The reason in a scoring server's error answer: its `message`, without the echo of the request MLflow puts
    before the model's own error ("Failed to predict data '...'. Error: ...")."""
    text = body.decode(errors="replace")
    try:
        text = str(json.loads(text).get("message", text))
    except (ValueError, AttributeError):
        pass
    if text.startswith("Failed to predict data") and "Error: " in text:
        text = text.rsplit("Error: ", 1)[1]
    return text.strip()[:limit]


def curl_example(url: str, columns: list[str] | None = None, tensor: bool = False) -> str:
    """A curl command that works against the server: two rows of the model's input columns (`input_spec`:
    utc_timestamp 2016-12-01 13:00 and 23:00 UTC and the weather; an older model's time columns derived),
    rounded to 6 digits."""
    from windpipe.training.features import model_input

    rows = model_input(loading.example_rows(), columns or FEATURES)
    numbers = rows.select_dtypes("number").columns
    rows[numbers] = rows[numbers].round(6)
    body = json.dumps(payload(rows, tensor))
    return f"curl -s {url}/invocations -H 'Content-Type: application/json' -d '{body}'"


@dataclass(frozen=True)
class Answer:
    """One request of a `Load`: when it started (monotonic s), how long it took, what came back."""

    worker: int
    started: float
    seconds: float
    status: int  # 0: no HTTP answer at all (refused, reset, timed out)
    version: str | None  # the X-Model-Version header
    error: str | None = None


class Load:
    """A bounded load of concurrent requests to a scoring server's /invocations (tests and benchmarks).

    `concurrency` threads each keep one HTTP connection and send `body` back to back until `stop()`, or until
    `max_requests` answers or `max_seconds` have passed, whichever comes first. Every answer is recorded.
    """

    def __init__(self, url: str, body: bytes, concurrency: int = 4, max_requests: int = 100_000,
                 max_seconds: float = 120.0, header: str = "X-Model-Version") -> None:
        self.url = urllib.parse.urlsplit(url)
        self.body = body
        self.concurrency = concurrency
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.header = header
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Load:
        self._deadline = time.monotonic() + self.max_seconds
        self._threads = [threading.Thread(target=self._worker, args=(i,), daemon=True) for i in range(self.concurrency)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> list[Answer]:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.max_seconds + 30)
        return self.answers

    def run(self) -> list[Answer]:
        """Start, wait until the bound is reached, return the answers."""
        self.start()
        for t in self._threads:
            t.join()
        return self.answers

    def _done(self) -> bool:
        return self._stop.is_set() or time.monotonic() >= self._deadline or len(self.answers) >= self.max_requests

    def _worker(self, worker: int) -> None:
        import http.client

        conn = None
        while not self._done():
            started = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=60)
                conn.request("POST", "/invocations", body=self.body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                answer = Answer(worker, started, time.monotonic() - started, resp.status, resp.getheader(self.header),
                                None if resp.status == 200 else data[:300].decode(errors="replace"))
            except (OSError, http.client.HTTPException) as exc:
                if conn is not None:
                    conn.close()
                conn = None
                answer = Answer(worker, started, time.monotonic() - started, 0, None, f"{type(exc).__name__}: {exc}")
            with self._lock:
                self.answers.append(answer)
        if conn is not None:
            conn.close()
