"""Tests for the notebook runner on small throwaway notebooks."""

import os

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from luna_utils import tutorial


@pytest.fixture
def fake_notebooks(tmp_path, monkeypatch):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    good = new_notebook(cells=[new_markdown_cell("# 00"), new_code_cell("x = 6 * 7\nprint(x)")])
    bad = new_notebook(
        cells=[new_code_cell("y = 1"), new_code_cell("raise ValueError('broken on purpose')")]
    )
    nbformat.write(good, folder / "00_good.ipynb")
    nbformat.write(bad, folder / "01_bad.ipynb")
    monkeypatch.setattr(tutorial, "notebooks_dir", lambda: folder)
    return folder


def test_list_notebooks_filters_by_number(fake_notebooks):
    assert [p.name for p in tutorial.list_notebooks(["1"])] == ["01_bad.ipynb"]
    with pytest.raises(tutorial.NotebookRunError, match="07"):
        tutorial.list_notebooks(["07"])


@pytest.mark.slow
def test_run_notebook_writes_outputs(fake_notebooks, tmp_path):
    target = tmp_path / "out" / "00_good.ipynb"
    timing = tutorial.run_notebook(fake_notebooks / "00_good.ipynb", target, timeout_s=120)
    executed = nbformat.read(target, as_version=4)
    assert executed.cells[1].outputs[0]["text"] == "42\n"
    assert executed.cells[1].execution_count == 1
    assert timing.cells == 1


@pytest.mark.slow
def test_failing_cell_is_named(fake_notebooks, tmp_path):
    original = (fake_notebooks / "01_bad.ipynb").read_bytes()
    with pytest.raises(tutorial.NotebookRunError) as raised:
        tutorial.run_notebook(fake_notebooks / "01_bad.ipynb", fake_notebooks / "01_bad.ipynb", 120)
    message = str(raised.value)
    assert "01_bad.ipynb" in message
    assert "code cell 2" in message
    assert "broken on purpose" in message
    assert (fake_notebooks / "01_bad.ipynb").read_bytes() == original


@pytest.mark.slow
def test_notebook_time_limit(fake_notebooks, tmp_path):
    slow = new_notebook(cells=[new_code_cell("import time\ntime.sleep(30)")])
    nbformat.write(slow, fake_notebooks / "02_slow.ipynb")
    with pytest.raises(tutorial.NotebookRunError, match="limit of 3 s"):
        tutorial.run_notebook(fake_notebooks / "02_slow.ipynb", tmp_path / "x.ipynb", timeout_s=3)


def test_format_timings_totals():
    table = tutorial.format_timings(
        [tutorial.NotebookTiming("00_a.ipynb", 1.25, 3), tutorial.NotebookTiming("01_b.ipynb", 2.0, 4)]
    )
    assert "| 00_a.ipynb | 3 | 1.2 |" in table or "| 00_a.ipynb | 3 | 1.3 |" in table
    assert table.splitlines()[-1] == "| total | 7 | 3.2 |"


@pytest.mark.slow
def test_run_tutorial_restores_environment(fake_notebooks, tmp_path, monkeypatch):
    monkeypatch.delenv(tutorial.ENV_DATA_DIR, raising=False)
    monkeypatch.setenv(tutorial.ENV_PLAIN_PROGRESS, "keep")
    data_dir = tmp_path / "data"
    data_dir.mkdir()

    tutorial.run_tutorial(only=["00"], data_dir=data_dir, output_dir=tmp_path / "out", timeout_s=120)

    assert tutorial.ENV_DATA_DIR not in os.environ
    assert os.environ[tutorial.ENV_PLAIN_PROGRESS] == "keep"
    assert (tmp_path / "out" / "00_good.ipynb").is_file()
