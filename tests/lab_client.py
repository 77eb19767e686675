"""Test helper: run code in a real kernel through a Jupyter server's API, as JupyterLab's front end does.

A session (POST /api/sessions) starts a kernel for a notebook path, so the kernel runs in the notebook's
folder; code goes over the kernel's websocket (/api/kernels/<id>/channels) as execute requests.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid

import nbformat
import websocket


class LabKernel:
    def __init__(self, base: str, token: str, notebook_path: str) -> None:
        self.base, self.token = base.rstrip("/"), token
        self.session = self._api("POST", "/api/sessions", {"path": notebook_path, "type": "notebook", "name": "",
                                                           "kernel": {"name": "python3"}})
        self.client_session = uuid.uuid4().hex
        kernel = self.session["kernel"]["id"]
        self.ws = websocket.create_connection(
            f"{self.base.replace('http', 'ws', 1)}/api/kernels/{kernel}/channels?session_id={self.client_session}",
            header=[f"Authorization: token {token}"], timeout=600)

    def _api(self, method: str, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(f"{self.base}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            text = resp.read()
        return json.loads(text) if text else {}

    def execute(self, code: str, timeout: float = 600) -> list[dict]:
        """Run `code`; return its outputs (nbformat output dicts); raise AssertionError on an error output."""
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "test", "session": self.client_session,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}))
        outputs: list[dict] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id or msg.get("channel") != "iopub":
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "status" and content["execution_state"] == "idle":
                return outputs
            if kind in ("stream", "display_data", "execute_result", "error"):
                outputs.append(nbformat.v4.output_from_msg(msg))
                if kind == "error":
                    raise AssertionError(f"{content['ename']}: {content['evalue']}\n" + "\n".join(content["traceback"]))
        raise AssertionError(f"no answer within {timeout} s to:\n{code[:500]}")

    def run_notebook(self, path, parameters: dict | None = None, timeout: float = 600) -> list[list[dict]]:
        """Every code cell of the notebook, as written; `parameters` run right after the parameters cell."""
        nb = nbformat.read(path, as_version=4)
        outputs = []
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            outputs.append(self.execute(cell.source, timeout))
            if parameters and "parameters" in cell.metadata.get("tags", []):
                self.execute("".join(f"{k} = {v!r}\n" for k, v in parameters.items()), timeout)
        return outputs

    def close(self) -> None:
        self.ws.close()
        self._api("DELETE", f"/api/sessions/{self.session['id']}")
