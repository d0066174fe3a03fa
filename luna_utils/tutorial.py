"""Run the tutorial notebooks in order, on the sample by default or on real LUNA16.

    python -m luna_utils.tutorial [--only 00 03] [--data DIR] [--output DIR] [--timeout S]

Each notebook runs in a fresh Python kernel with nbclient, with its folder as the working
directory. The run stops at the first failing cell and names the notebook, the cell number and the
error. By default the executed notebooks replace the ones in `notebooks/`; `--output` writes them
elsewhere.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

from luna_utils.dataset import ENV_DATA_DIR, display_path, repo_root, resolve_data_dir
from luna_utils.errors import LunaError
from luna_utils.notebook import ENV_BATCH_RUN
from luna_utils.progress import ENV_PLAIN_PROGRESS, progress

logger = logging.getLogger(__name__)

# Wall-clock limit for one notebook, in seconds. The whole series on the sample takes about a
# quarter of an hour on 2 cores; the real dataset needs far more (pass --timeout).
DEFAULT_TIMEOUT_S = 1200


class NotebookRunError(LunaError):
    """A notebook cell failed or a notebook ran past its time limit."""


@dataclass(frozen=True)
class NotebookTiming:
    """How long one notebook took to execute."""

    name: str
    seconds: float
    cells: int


def notebooks_dir() -> Path:
    """Return the folder holding the tutorial notebooks."""
    return repo_root() / "notebooks"


def list_notebooks(only: list[str] | None = None) -> list[Path]:
    """Return the tutorial notebooks in order, optionally only those whose number is in `only`.

    Args:
        only: Two-digit notebook numbers such as ["00", "03"]; None selects every notebook.

    Raises:
        NotebookRunError: If a requested number matches no notebook.
    """
    notebooks = sorted(path for path in notebooks_dir().glob("[0-9][0-9]_*.ipynb"))
    if not only:
        return notebooks
    wanted = {number.zfill(2) for number in only}
    selected = [path for path in notebooks if path.name[:2] in wanted]
    found = {path.name[:2] for path in selected}
    missing = sorted(wanted - found)
    if missing:
        available = ", ".join(path.name[:2] for path in notebooks)
        raise NotebookRunError(
            f"No notebook numbered {', '.join(missing)} in {display_path(notebooks_dir())}; "
            f"available: {available}."
        )
    return selected


def run_notebook(path: Path, output_path: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> NotebookTiming:
    """Execute one notebook top to bottom and write it with its outputs.

    Args:
        path: The notebook to run.
        output_path: Where to write the executed notebook (may equal `path`).
        timeout_s: Wall-clock limit for the whole notebook, in seconds.

    Returns:
        The notebook's run time.

    Raises:
        NotebookRunError: If a cell fails or the notebook runs past `timeout_s`. The notebook file
            is then left unchanged.
    """
    notebook = nbformat.read(path, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    started = time.monotonic()
    deadline = started + timeout_s
    bar = progress(total=len(code_cells), desc=path.stem, unit="cell", leave=True)

    client = NotebookClient(
        notebook,
        timeout=int(timeout_s),
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=False,
    )

    def limit_cell_time(cell, cell_index, **_):
        # The per-cell timeout shrinks as the notebook's own limit approaches.
        client.timeout = max(1, int(deadline - time.monotonic()))

    def count_cell(cell, cell_index, **_):
        bar.update(1)

    client.on_cell_start = limit_cell_time
    client.on_cell_executed = count_cell

    try:
        client.execute()
    except CellTimeoutError as error:
        raise NotebookRunError(
            f"{path.name} ran past its limit of {timeout_s:.0f} s. Raise it with --timeout."
        ) from error
    except CellExecutionError as error:
        cell_number = _failing_cell_number(notebook)
        summary = f"{error.ename}: {error.evalue}" if getattr(error, "ename", None) else str(error)
        raise NotebookRunError(
            f"{path.name}, code cell {cell_number} failed with {summary}. Open the notebook, run it "
            "up to that cell and read the traceback."
        ) from error
    finally:
        bar.close()

    _write_atomic(notebook, output_path)
    return NotebookTiming(path.name, time.monotonic() - started, len(code_cells))


def _failing_cell_number(notebook) -> int | str:
    """Return the 1-based number, among code cells, of the first cell with an error output."""
    code_number = 0
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        code_number += 1
        if any(output.get("output_type") == "error" for output in cell.get("outputs", [])):
            return code_number
    return "?"


def _write_atomic(notebook, output_path: Path) -> None:
    output_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = output_path.with_name(f".{output_path.name}.tmp")
    nbformat.write(notebook, temporary)
    os.replace(temporary, output_path)


def run_tutorial(
    only: list[str] | None = None,
    data_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[NotebookTiming]:
    """Execute the tutorial notebooks in order on one dataset.

    Args:
        only: Notebook numbers to run (for example ["00", "03"]); None runs all of them.
        data_dir: Dataset folder; None uses `LUNA16_DIR` or the sample, as `resolve_data_dir` does.
        output_dir: Folder for the executed notebooks; None writes them in place.
        timeout_s: Time limit per notebook, in seconds.

    Returns:
        The run time of each notebook, in order.

    Raises:
        NotebookRunError: At the first failing notebook; later notebooks are not run.
    """
    notebooks = list_notebooks(only)
    root = resolve_data_dir(data_dir)

    # Kernels inherit this process's environment: they see the same dataset and write plain
    # progress bars, which read well in a saved notebook, and interactive widgets are drawn as
    # static figures. The caller's values are restored after.
    saved = {name: os.environ.get(name) for name in (ENV_DATA_DIR, ENV_PLAIN_PROGRESS, ENV_BATCH_RUN)}
    os.environ[ENV_DATA_DIR] = str(root)
    os.environ[ENV_PLAIN_PROGRESS] = "1"
    os.environ[ENV_BATCH_RUN] = "1"
    logger.info("Running %d notebook(s) on %s", len(notebooks), display_path(root))

    timings = []
    try:
        for path in progress(notebooks, desc="notebooks", unit="notebook"):
            target = Path(output_dir) / path.name if output_dir else path
            timing = run_notebook(path, target, timeout_s)
            logger.info("%s finished in %.1f s", path.name, timing.seconds)
            timings.append(timing)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return timings


def format_timings(timings: list[NotebookTiming]) -> str:
    """Return a Markdown table of notebook run times."""
    lines = ["| notebook | code cells | time (s) |", "|---|---:|---:|"]
    for timing in timings:
        lines.append(f"| {timing.name} | {timing.cells} | {timing.seconds:.1f} |")
    total = sum(timing.seconds for timing in timings)
    lines.append(f"| total | {sum(t.cells for t in timings)} | {total:.1f} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m luna_utils.tutorial",
        description="Run the tutorial notebooks in order (the synthetic sample unless --data or "
        "LUNA16_DIR names a dataset).",
    )
    parser.add_argument("--only", nargs="+", metavar="NN", help="notebook numbers to run, e.g. 00 03")
    parser.add_argument("--data", type=Path, help="dataset folder (default: LUNA16_DIR, else the sample)")
    parser.add_argument("--output", type=Path, help="folder for executed notebooks (default: in place)")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="time limit per notebook, in seconds (default: %(default)s)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        timings = run_tutorial(args.only, args.data, args.output, args.timeout)
    except LunaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_timings(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
