"""Checks on the committed tutorial notebooks, and a full execution on the sample data."""

import re
import socket
from pathlib import Path

import nbformat
import pytest

from luna_utils import tutorial

NOTEBOOKS = tutorial.list_notebooks()
MAX_NOTEBOOK_BYTES = 3 * 1024 * 1024

# Text that would reveal a local path, a user or a machine in a rendered notebook.
ABSOLUTE_PATH = re.compile(r"(?<![\w.~])(/work/|/root/|/home/|/Users/|/tmp/|/var/folders/|[A-Z]:\\\\)")
MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _output_texts(notebook):
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            texts = []
            if "text" in output:
                texts.append(output["text"])
            for mime, value in output.get("data", {}).items():
                if mime.startswith("text/") or mime == "application/json":
                    texts.append(value if isinstance(value, str) else str(value))
            if output.get("output_type") == "error":
                texts.append("\n".join(output.get("traceback", [])))
            for text in texts:
                yield index, text if isinstance(text, str) else "".join(text)


def _ids(paths):
    return [path.stem for path in paths]


def test_notebook_numbering_is_contiguous():
    numbers = [int(path.name[:2]) for path in NOTEBOOKS]
    assert numbers == list(range(len(numbers))), numbers


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_rendered_and_clean(path):
    notebook = nbformat.read(path, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]

    assert path.stat().st_size < MAX_NOTEBOOK_BYTES, f"{path.name} is {path.stat().st_size} bytes"
    assert code_cells, f"{path.name} has no code cell"
    assert any(cell.outputs for cell in code_cells), f"{path.name} carries no outputs"

    counts = [cell.execution_count for cell in code_cells]
    assert None not in counts, f"{path.name} has unexecuted code cells: {counts}"
    assert counts == list(range(1, len(counts) + 1)), f"{path.name} execution counts: {counts}"

    errors = [
        index
        for index, cell in enumerate(notebook.cells)
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert errors == [], f"{path.name} has error outputs in cells {errors}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_outputs_show_no_local_paths(path):
    notebook = nbformat.read(path, as_version=4)
    hostname = socket.gethostname()
    for index, text in _output_texts(notebook):
        match = ABSOLUTE_PATH.search(text)
        assert match is None, f"{path.name} cell {index} shows {text[max(0, match.start() - 40):match.end() + 40]!r}"
        if len(hostname) > 3:
            assert hostname not in text, f"{path.name} cell {index} shows the machine name"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_links_resolve(path):
    notebook = nbformat.read(path, as_version=4)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "markdown":
            continue
        for target in MARKDOWN_LINK.findall(cell.source):
            if re.match(r"^(https?:|mailto:|#|data:|attachment:)", target):
                continue
            relative = target.split("#", 1)[0]
            resolved = (path.parent / relative).resolve()
            assert resolved.exists(), f"{path.name} cell {index} links to missing {target}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_structure(path):
    notebook = nbformat.read(path, as_version=4)
    markdown = [cell.source for cell in notebook.cells if cell.cell_type == "markdown"]

    assert markdown and markdown[0].startswith(f"# {path.name[:2]}"), f"{path.name} lacks its title"
    assert any("what you will learn" in text.lower() for text in markdown[:3])
    assert any("setup_notebook" in cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert "## Our journey so far" in markdown[-1], f"{path.name} must close with 'Our journey so far'"

    position = NOTEBOOKS.index(path)
    if position + 1 < len(NOTEBOOKS):
        assert NOTEBOOKS[position + 1].name in markdown[-1], f"{path.name} must link the next notebook"


@pytest.mark.notebooks
@pytest.mark.slow
def test_tutorial_runs_on_sample(tmp_path):
    timings = tutorial.run_tutorial(output_dir=tmp_path)
    assert [timing.name for timing in timings] == [path.name for path in NOTEBOOKS]
    for timing in timings:
        executed = nbformat.read(tmp_path / timing.name, as_version=4)
        assert all(
            output.get("output_type") != "error"
            for cell in executed.cells
            for output in cell.get("outputs", [])
        )
