"""Run a workshop notebook headless with parameters (nbclient; no papermill needed).

Parameters follow papermill's convention: the notebook's cell tagged ``parameters`` holds the
defaults; the values given here go into a new cell tagged ``injected-parameters`` right after
it, so the notebook runs unchanged in Jupyter and headless.

    python -m windpipe.notebooks 2_tracked/model_rf.ipynb -p n_estimators=8 -p sample_rows=500

Values are parsed as Python literals when they can be (``8`` -> int, ``'a'`` -> str, ``None``),
otherwise kept as strings. The executed notebook (with outputs) is written to ``--out`` if given.
"""

from __future__ import annotations

import argparse
import ast
import os
from pathlib import Path
from typing import Any

from windpipe.errors import WindpipeError

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"


def inject_parameters(nb: Any, parameters: dict[str, Any]) -> Any:
    """Insert (or replace) the injected-parameters cell after the cell tagged `parameters`."""
    import nbformat

    cells = [c for c in nb.cells if INJECTED_TAG not in c.get("metadata", {}).get("tags", [])]
    where = next((i for i, c in enumerate(cells) if PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])), None)
    if where is None:
        if parameters:
            raise WindpipeError("The notebook has no cell tagged 'parameters'.",
                                "tag the cell that holds the defaults with 'parameters' (View > Cell toolbar > Tags)")
        nb.cells = cells
        return nb
    if parameters:
        source = "# Injected parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in parameters.items())
        cell = nbformat.v4.new_code_cell(source, metadata={"tags": [INJECTED_TAG]})
        cells.insert(where + 1, cell)
    nb.cells = cells
    return nb


def run_notebook(path: Path | str, parameters: dict[str, Any] | None = None, cwd: Path | str | None = None,
                 env: dict[str, str] | None = None, out: Path | str | None = None,
                 timeout: int = 600) -> Any:
    """Execute `path` with `parameters` in `cwd` (default: the notebook's folder); return the executed notebook.

    `env` is the kernel's environment (default: this process's). Raises nbclient's
    CellExecutionError when a cell fails.
    """
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    if not path.is_file():
        raise WindpipeError(f"Notebook {path} does not exist.", "check the path (e.g. 2_tracked/model_rf.ipynb)")
    nb = inject_parameters(nbformat.read(path, as_version=4), parameters or {})
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd or path.parent)}})
    try:
        client.execute(env=dict(os.environ if env is None else env))
    finally:
        if out is not None:
            nbformat.write(nb, str(out))
    return nb


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m windpipe.notebooks", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--cwd", type=Path, default=None, help="working folder (default: the notebook's folder)")
    parser.add_argument("--out", type=Path, default=None, help="write the executed notebook here")
    args = parser.parse_args(argv)
    params = {}
    for item in args.parameter:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            parser.error(f"parameter {item!r} is not NAME=VALUE")
        params[name] = _literal(value)
    try:
        run_notebook(args.notebook, params, cwd=args.cwd, out=args.out)
    except WindpipeError as exc:
        print(f"error: {exc}")
        return 1
    print(f"ran {args.notebook}" + (f" -> {args.out}" if args.out else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
