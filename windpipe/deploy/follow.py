"""A model server that follows an alias: `windpipe serve` answers with `models:/<model>@production` and
switches to a newly promoted (or rolled-back) version without a restart and without a failed request.

It is MLflow's own scoring server: each loaded version gets the FastAPI app `mlflow.pyfunc.scoring_server.init`
builds (the same `/invocations` payloads: `dataframe_split`, `dataframe_records`, `inputs`, CSV; `/ping`,
`/version`), and a small ASGI router in front passes each request to the app of the current version and adds
the header `X-Model-Version`. A watcher thread resolves the alias every few seconds; a new version is loaded
beside the old one (through `windpipe.models.loading`, files cached per version), checked with one
prediction, and swapped in only if the alias still names it then (a rollback during the load wins): requests
in flight finish on the old app, new ones go to the new app. So the server never swaps in a version that is
no longer production. A version
that fails to load or to predict is not swapped in; the old one keeps answering, the failure is logged and
shown at `/health`.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from windpipe.errors import WindpipeError, first_line
from windpipe.models import loading
from windpipe.names import FEATURES, TIMESTAMP
from windpipe.settings import Settings

log = logging.getLogger("windpipe.serving")
VERSION_HEADER = "X-Model-Version"
CHASES = 3  # versions loaded in one poll while the alias keeps moving during the loads
Say = Callable[[str], None]


@dataclass(frozen=True)
class Slot:
    """One loaded version and the scoring app that answers with it."""

    ref: loading.ModelRef
    app: Any
    loaded_at: float

    @property
    def version(self) -> str:
        return self.ref.version or self.ref.load_uri


@dataclass
class Health:
    """What /health reports besides the version that answers."""

    last_check: float | None = None
    last_error: dict[str, Any] | None = None  # {"version", "error", "at"} of the last failed load
    swaps: int = 0
    failed: dict[str, float] = field(default_factory=dict)  # version -> when it failed (retried after a while)


class Checked:
    """A loaded model as MLflow's scoring app calls it: a request's weather values are checked as `windpipe predict`
    checks them (windpipe.scoring.validate.check_values: a 400 names the rows and the range, where the bare model
    answered 1e308 m/s with 59 GW), and Keras draws no progress bar in the request's thread (its switch is
    per thread)."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self._columns = list(loading.signature_columns(model))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        import numpy as np
        import pandas as pd
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from windpipe.scoring.validate import check_values
        from windpipe.tracking.output import quiet_keras

        frame = data
        if isinstance(data, np.ndarray) and data.ndim == 2 and data.shape[1] == len(self._columns):
            frame = pd.DataFrame(data, columns=self._columns)  # a tensor payload: the signature's column order
        if isinstance(frame, pd.DataFrame):
            try:
                check_values(frame)
            except WindpipeError as exc:
                raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        quiet_keras()
        return self._model.predict(data, params=params)


def build_slot(ref: loading.ModelRef, settings: Settings) -> Slot:
    """Load `ref` through the one loader, check it predicts, and build MLflow's scoring app for it."""
    from mlflow.pyfunc import scoring_server

    model = loading.load(ref, settings)
    # one prediction before it answers anyone: a model that loads but cannot score is not swapped in
    example = loading.example_rows()
    loading.predict(model, example[FEATURES], example[TIMESTAMP])
    return Slot(ref, scoring_server.init(Checked(model)), time.time())


class FollowingServer:
    """The ASGI app: routes to the current version's scoring app; `/health` is its own."""

    def __init__(self, settings: Settings, model_uri: str, poll_seconds: float, say: Say = print,
                 retry_failed_seconds: float = 60.0) -> None:
        self.settings = settings
        self.model_uri = model_uri
        self.poll_seconds = poll_seconds
        self.retry_failed_seconds = retry_failed_seconds
        self.say = say
        self.health = Health()
        self.current: Slot | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the version that answers

    def load_initial(self) -> Slot:
        """Resolve and load the version the alias names now (errors are the caller's: nothing serves yet)."""
        ref = loading.resolve(self.model_uri, self.settings)
        self.current = build_slot(ref, self.settings)
        self.health.last_check = time.time()
        return self.current

    def _resolve(self) -> loading.ModelRef | None:
        """The version the alias names now; None (logged) when the tracking server cannot say."""
        try:
            return loading.resolve(self.model_uri, self.settings)
        except WindpipeError as exc:  # the tracking server is away or the alias was removed: keep serving
            log.warning("cannot resolve %s (%s); still serving version %s", self.model_uri, exc.problem,
                        self.current.version if self.current else "-")
            return None
        finally:
            self.health.last_check = time.time()

    def check_once(self) -> bool:
        """Resolve the alias; load a new version, and swap it in only if the alias still names it once it is
        loaded (a rollback that came during the load wins: the loaded version is dropped and the one the alias
        names now is served, or loaded in turn). True when a swap happened."""
        ref = self._resolve()
        for _ in range(CHASES):
            old = self.current
            if ref is None or (old is not None and ref.load_uri == old.ref.load_uri):
                return False
            version = ref.version or ref.load_uri
            failed_at = self.health.failed.get(version)
            if failed_at is not None and time.time() - failed_at < self.retry_failed_seconds:
                return False
            started = time.perf_counter()
            try:
                slot = build_slot(ref, self.settings)
            except Exception as exc:  # a broken version: the old one keeps answering
                loading.unload(ref)
                reason = exc.problem if isinstance(exc, WindpipeError) else first_line(exc, 500)
                self.health.failed[version] = time.time()
                self.health.last_error = {"version": version, "error": reason, "at": _iso(time.time())}
                log.error("version %s of %s was not swapped in: %s; version %s keeps answering", version,
                          self.model_uri, reason, old.version if old else "-")
                return False
            now = self._resolve()  # the alias again: is the loaded version still the one it names?
            if now is None or now.load_uri != ref.load_uri:
                loading.unload(ref)
                log.warning("version %s of %s was loaded but is no longer what the alias names (%s); not swapped in",
                            version, self.model_uri, "unknown" if now is None else now.version or now.load_uri)
                ref = now
                continue
            self.current = slot  # one assignment: requests in flight keep the old app, new ones get this one
            self.health.swaps += 1
            self.health.failed.pop(version, None)
            if self.health.last_error and self.health.last_error.get("version") == version:
                self.health.last_error = None
            self.say(f"serving version {slot.version} ({slot.ref.label}) instead of "
                     f"{old.version if old else '-'}: loaded and checked in {time.perf_counter() - started:.1f} s")
            if old is not None:
                loading.unload(old.ref)
            return True
        return False  # the alias kept moving while versions loaded: the next poll looks again

    # ------------------------------------------------------------------ the watcher

    def start_watching(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="windpipe-alias-watcher", daemon=True)
            self._thread.start()

    def stop_watching(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.check_once()
            except Exception:  # never let the watcher die: the next poll tries again
                log.exception("the alias watcher failed; it tries again in %.0f s", self.poll_seconds)

    # ------------------------------------------------------------------ ASGI

    def health_body(self) -> dict[str, Any]:
        slot = self.current
        return {
            "status": "ok" if self.health.last_error is None else "degraded",
            "model_uri": self.model_uri,
            "version": slot.version if slot else None,
            "instance_name": slot.ref.instance_name if slot else None,
            "loaded_at": _iso(slot.loaded_at) if slot else None,
            "last_check": _iso(self.health.last_check) if self.health.last_check else None,
            "poll_seconds": self.poll_seconds,
            "swaps": self.health.swaps,
            "last_error": self.health.last_error,
        }

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        slot = self.current
        if scope["type"] == "http" and scope.get("path") == "/health":
            await _json(send, 200 if slot is not None else 503, self.health_body(), slot)
            return
        if slot is None:
            await _json(send, 503, {"error": "no model loaded yet"}, None)
            return
        if scope["type"] == "http" and scope.get("method") == "POST" and scope.get("path") == "/invocations":
            body = await _body(receive)
            if body is None:  # the client went away
                return
            if json_depth(body) > MAX_JSON_DEPTH:  # (MLflow's parser would raise RecursionError: a 500)
                await _json(send, 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": (
                    f"The request's JSON is nested deeper than {MAX_JSON_DEPTH} levels; a scoring payload needs 4."
                    " Send dataframe_split, dataframe_records or inputs (see the curl example `windpipe serve` "
                    "prints).")}, slot)
                return
            receive = _replay(body, receive)
        header = (VERSION_HEADER.lower().encode(), slot.version.encode())

        async def send_with_version(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        await slot.app(scope, receive, send_with_version)

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.start_watching()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.stop_watching()
                await send({"type": "lifespan.shutdown.complete"})
                return


MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def json_depth(body: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest (brackets inside strings do not count; any text
    gives a number, valid JSON or not). Vectorised: the body may be megabytes."""
    import numpy as np

    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:  # the usual small request
        return body.count(b"[") + body.count(b"{")
    chars = np.frombuffer(_JSON_STRING.sub(b"", body), dtype=np.uint8)
    steps = np.isin(chars, (ord("["), ord("{"))).astype(np.int32) - np.isin(chars, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max(initial=0))


async def _body(receive: Callable) -> bytes | None:
    """The whole request body (None when the client disconnected first)."""
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


def _replay(body: bytes, receive: Callable) -> Callable:
    """A receive callable that hands `body` over once, then waits on the client as `receive` does."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _json(send: Callable, status: int, body: dict, slot: Slot | None) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if slot is not None:
        headers.append((VERSION_HEADER.lower().encode(), slot.version.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a clear error when the port is taken."""
    # proto=IPPROTO_TCP, as uvicorn's own sockets have it: asyncio turns Nagle's algorithm off (TCP_NODELAY)
    # only for connections of such sockets; with proto 0 every response waited for the client's delayed ACK
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise WindpipeError(f"Port {port} on {host} is taken, so the model server cannot start ({exc.strerror}).",
                            "stop what holds it, or pass --port <another> (or set WINDPIPE_SERVE_PORT)") from None
    sock.listen(2048)
    return sock


def serve(settings: Settings, model_uri: str, host: str, port: int, poll_seconds: float,
          say: Say = print, ready: Callable[[FollowingServer], None] | None = None) -> None:
    """Serve `model_uri` on host:port under uvicorn until interrupted, following the alias.

    The port is bound first (a taken port fails at once), then the first version is loaded and checked;
    `ready(server)` is called when requests can be sent (they queue until uvicorn accepts them).
    """
    import uvicorn

    from windpipe.tracking.output import quiet_keras

    quiet_keras()  # (before a model imports Keras: its predict draws a progress bar per request on a terminal)
    sock = listen(host, port)
    try:
        server = FollowingServer(settings, model_uri, poll_seconds, say=say)
        server.load_initial()
        if ready is not None:
            ready(server)
        config = uvicorn.Config(server, log_level="warning", access_log=False, lifespan="on")
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
