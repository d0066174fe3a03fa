"""FROC figures and result files of an evaluation."""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from luna_utils.evaluation.froc import FP_RATES_PER_SCAN
from luna_utils.evaluation.result import EvaluationResult

FPS_AXIS_LABEL = "Average false positives per scan"
SENSITIVITY_AXIS_LABEL = "Sensitivity"

# Resolution of the PNG the CLI writes.
FIGURE_DPI = 100

# Points at which a FROC curve is drawn, evenly spaced on the log axis.
PLOT_GRID_FPS = np.geomspace(FP_RATES_PER_SCAN[0], FP_RATES_PER_SCAN[-1], num=400)


def plot_froc(results: EvaluationResult | Mapping[str, EvaluationResult], ax=None, show_points: bool = True):
    """Draw FROC curves on a log2 axis from 1/8 to 8 false positives per scan.

    Each curve is drawn with its bootstrap band (shaded) when the result has one, and its
    sensitivities at the seven CPM rates as dots. The legend gives each CPM.

    Args:
        results: One result, or results by label (one curve each).
        ax: Matplotlib axes to draw on; None creates a figure with `matplotlib.pyplot`.
        show_points: Mark the sensitivities at the CPM rates.

    Returns:
        The axes.
    """
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 4.5))
    if isinstance(results, EvaluationResult):
        results = {"submission": results}

    for label, result in results.items():
        legend = f"{label} (CPM {result.cpm:.3f}"
        if result.cpm_ci is not None:
            legend += f", {result.cpm_ci[0]:.3f}-{result.cpm_ci[1]:.3f}"
        legend += ")"
        # The curve as the CPM reads it: linear interpolation between FROC points, on the plotted range.
        sensitivity = np.interp(PLOT_GRID_FPS, result.fps_per_scan, result.sensitivity)
        (line,) = ax.plot(PLOT_GRID_FPS, sensitivity, label=legend)
        if result.bootstrap is not None:
            band = result.bootstrap
            ax.fill_between(
                band.fps_per_scan, band.sensitivity_lower, band.sensitivity_upper, color=line.get_color(), alpha=0.15, linewidth=0
            )
        if show_points:
            ax.plot(FP_RATES_PER_SCAN, result.sensitivities, "o", color=line.get_color(), markersize=4)

    ax.set_xscale("log", base=2)
    ax.set_xlim(FP_RATES_PER_SCAN[0], FP_RATES_PER_SCAN[-1])
    ax.set_xticks(FP_RATES_PER_SCAN)
    ax.set_xticklabels(["1/8", "1/4", "1/2", "1", "2", "4", "8"])
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel(FPS_AXIS_LABEL)
    ax.set_ylabel(SENSITIVITY_AXIS_LABEL)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return ax


# Colour and marker of each mark outcome in `plot_outcomes`.
OUTCOME_STYLES = {
    "hit": ("tab:green", "o"),
    "double": ("tab:olive", "s"),
    "excluded": ("tab:gray", "D"),
    "false_positive": ("tab:red", "x"),
    "dropped_by_cap": ("tab:purple", "v"),
}


def plot_outcomes(result: EvaluationResult, seriesuid: str | None = None, excluded=None, ax=None):
    """Draw one scan's findings and marks seen from above (world x, y in mm), marks coloured by outcome.

    Included nodules are solid circles labelled "hit" or "missed", excluded findings dashed grey
    circles (10 mm for an unknown diameter). The circles are the findings' spheres cut at their
    own centre, so the drawing is exact for findings and marks at the same z, as in a toy example.

    Args:
        result: An evaluation result.
        seriesuid: The scan to draw; None takes the first scan of `result.nodules` or `result.marks`.
        excluded: The excluded findings table, to draw them too; None leaves them out.
        ax: Matplotlib axes; None creates a figure with `matplotlib.pyplot`.

    Returns:
        The axes.
    """
    from matplotlib.patches import Circle

    from luna_utils.matching import effective_diameters

    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 5))
    if seriesuid is None:
        seriesuid = (result.nodules if len(result.nodules) else result.marks)["seriesuid"].iloc[0]

    nodules = result.nodules[result.nodules["seriesuid"] == seriesuid]
    for nodule in nodules.itertuples(index=False):
        colour = "tab:green" if nodule.detected else "tab:orange"
        ax.add_patch(Circle((nodule.coordX, nodule.coordY), nodule.diameter_mm / 2, fill=False, color=colour, linewidth=2))
        label = "nodule: hit" if nodule.detected else "nodule: missed"
        ax.annotate(label, (nodule.coordX, nodule.coordY + nodule.diameter_mm / 2), ha="center", va="bottom", color=colour)

    if excluded is not None:
        findings = excluded[excluded["seriesuid"] == seriesuid]
        for finding, diameter in zip(findings.itertuples(index=False), effective_diameters(findings["diameter_mm"])):
            ax.add_patch(Circle((finding.coordX, finding.coordY), diameter / 2, fill=False, color="gray", linestyle="--"))
            ax.annotate("excluded", (finding.coordX, finding.coordY + diameter / 2), ha="center", va="bottom", color="gray")

    marks = result.marks[result.marks["seriesuid"] == seriesuid]
    for outcome, (colour, marker) in OUTCOME_STYLES.items():
        chosen = marks[marks["outcome"] == outcome]
        if len(chosen):
            ax.scatter(chosen["coordX"], chosen["coordY"], color=colour, marker=marker, label=outcome.replace("_", " "), zorder=3)
    for mark in marks.itertuples(index=False):
        ax.annotate(f"{mark.probability:.2f}", (mark.coordX, mark.coordY), textcoords="offset points", xytext=(5, -10), fontsize=8)

    ax.set_aspect("equal")
    ax.autoscale_view()
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")
    ax.legend(loc="best", fontsize="small", title="mark outcome")
    return ax


def write_outputs(result: EvaluationResult, out_dir: str | Path, label: str = "submission") -> dict[str, Path]:
    """Write the FROC plot, curve, bands, per-nodule table, summary and JSON numbers to a folder.

    Every file is written atomically (a temporary file in the same folder, then `os.replace`).

    Args:
        result: The evaluation result.
        out_dir: Destination folder, created if needed.
        label: Name of the system, used in the plot legend.

    Returns:
        Paths by kind: `plot` (froc.png), `curve` (froc.csv), `bands` (froc_bootstrap.csv, only
        with a bootstrap), `nodules` (nodules.csv), `summary` (summary.txt), `json` (result.json).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "plot": out_dir / "froc.png",
        "curve": out_dir / "froc.csv",
        "nodules": out_dir / "nodules.csv",
        "summary": out_dir / "summary.txt",
        "json": out_dir / "result.json",
    }

    _atomic_write(paths["plot"], _froc_png(result, label))
    _atomic_write(paths["curve"], result.froc_frame().to_csv(index=False).encode())
    _atomic_write(paths["nodules"], result.nodules.to_csv(index=False).encode())
    _atomic_write(paths["summary"], (result.summary() + "\n").encode())
    _atomic_write(paths["json"], (json.dumps(result.to_dict(), indent=1) + "\n").encode())
    bands = result.bootstrap_frame()
    if bands is not None:
        paths["bands"] = out_dir / "froc_bootstrap.csv"
        _atomic_write(paths["bands"], bands.to_csv(index=False).encode())
    return paths


def _froc_png(result: EvaluationResult, label: str) -> bytes:
    """Render the FROC figure to PNG bytes without touching pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4.5))
    FigureCanvasAgg(figure)
    plot_froc({label: result}, ax=figure.add_subplot())
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
    return buffer.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write a file atomically: a temporary file in the same folder, then `os.replace`."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
