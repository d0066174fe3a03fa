"""Tests for exact HU value counts, binning, percentiles and the histogram plot."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from luna_utils import histograms
from luna_utils.errors import LunaError


def _random_volume(seed=0, shape=(7, 9, 11)):
    rng = np.random.default_rng(seed)
    volume = rng.integers(-1100, 1500, size=shape).astype(np.int16)
    volume[0, :2, :] = -3024
    volume[6, 0, 0] = 32767
    volume[5, 0, 0] = -32768
    return volume


def test_value_counts_match_numpy_unique():
    volume = _random_volume()

    counts = histograms.value_counts(volume, chunk_slices=3)

    values, expected = np.unique(volume, return_counts=True)
    assert counts.dtype == np.int64
    assert counts.sum() == volume.size
    np.testing.assert_array_equal(counts[values.astype(np.int64) + histograms.VALUE_OFFSET], expected)
    assert counts[0] == 1  # -32768
    assert counts[-1] == 1  # 32767


def test_value_counts_other_integer_dtypes():
    small = np.array([[0, 1, 255]], dtype=np.uint8)
    wide = np.array([[-5, 7, 7]], dtype=np.int32)

    assert histograms.value_counts(small)[histograms.VALUE_OFFSET + 255] == 1
    assert histograms.value_counts(wide)[histograms.VALUE_OFFSET + 7] == 2


def test_value_counts_reject_bad_input():
    with pytest.raises(LunaError, match="float32"):
        histograms.value_counts(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(LunaError, match="40000"):
        histograms.value_counts(np.array([[0, 40000]], dtype=np.int32))


def test_value_counts_empty_volume():
    counts = histograms.value_counts(np.zeros((0, 4, 4), dtype=np.int16))

    assert counts.shape == (histograms.N_VALUES,)
    assert counts.sum() == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_percentiles_match_numpy(seed):
    volume = _random_volume(seed)
    quantiles = [0, 1, 5, 12.5, 50, 95, 99, 99.9, 100]

    result = histograms.percentiles_from_counts(histograms.value_counts(volume), quantiles)

    np.testing.assert_allclose(result, np.percentile(volume, quantiles), rtol=1e-12, atol=1e-9)


def test_percentiles_with_ties_and_single_voxel():
    ties = np.array([3, 3, 3, 10], dtype=np.int16)
    single = np.array([-7], dtype=np.int16)

    np.testing.assert_allclose(
        histograms.percentiles_from_counts(histograms.value_counts(ties), [0, 50, 70, 100]),
        np.percentile(ties, [0, 50, 70, 100]),
    )
    assert histograms.percentiles_from_counts(histograms.value_counts(single), [0, 50, 100]).tolist() == [-7, -7, -7]


def test_percentiles_reject_bad_input():
    counts = histograms.value_counts(np.array([1, 2], dtype=np.int16))
    with pytest.raises(LunaError, match=r"\[0, 100\]"):
        histograms.percentiles_from_counts(counts, [101])
    with pytest.raises(LunaError, match="empty"):
        histograms.percentiles_from_counts(np.zeros(histograms.N_VALUES, dtype=np.int64), [50])
    with pytest.raises(LunaError, match="shape"):
        histograms.percentiles_from_counts(np.zeros(10), [50])


def test_bin_value_counts_match_numpy_histogram():
    volume = _random_volume()
    volume[1, 0, :3] = [-3100, 3099, 3100]

    histogram, n_below, n_above = histograms.bin_value_counts(histograms.value_counts(volume))

    inside = volume[(volume >= -3100) & (volume < 3100)]
    # np.histogram closes its last bin on the right; no value equals 3100 inside the range here.
    expected, _ = np.histogram(inside, bins=histograms.HU_BIN_EDGES)
    np.testing.assert_array_equal(histogram, expected)
    assert histogram.shape == (620,)
    assert n_below == int((volume < -3100).sum()) == 1
    assert n_above == int((volume >= 3100).sum()) == 2
    assert histogram.sum() + n_below + n_above == volume.size


def test_bin_value_counts_edges_beyond_int16():
    counts = histograms.value_counts(np.array([-32768, 0, 32767], dtype=np.int16))

    histogram, n_below, n_above = histograms.bin_value_counts(counts, [-40000, 0, 40000])

    assert histogram.tolist() == [1, 2]
    assert (n_below, n_above) == (0, 0)
    with pytest.raises(LunaError, match="increasing"):
        histograms.bin_value_counts(counts, [0, 0, 10])


def test_summarize_counts_matches_numpy():
    volume = _random_volume()

    summary = histograms.summarize_counts(histograms.value_counts(volume))

    assert summary.n_voxels == volume.size
    assert summary.min_hu == -32768
    assert summary.max_hu == 32767
    assert summary.mean_hu == pytest.approx(volume.mean(dtype=np.float64), rel=1e-12)
    assert summary.std_hu == pytest.approx(volume.std(dtype=np.float64), rel=1e-12)
    assert summary.mode_hu == -3024
    assert list(summary.percentiles_hu) == list(histograms.PERCENTILES)
    assert summary.as_row()["p50_hu"] == pytest.approx(np.percentile(volume, 50))


def test_summarize_counts_is_exact():
    from fractions import Fraction

    rng = np.random.default_rng(5)
    counts = np.zeros(histograms.N_VALUES, dtype=np.int64)
    counts[rng.integers(0, histograms.N_VALUES, size=3000)] = rng.integers(1, 10**9, size=3000)
    values = [int(v) for v in histograms.hu_values()]
    weights = [int(c) for c in counts]
    total = sum(weights)
    exact_mean = Fraction(sum(v * w for v, w in zip(values, weights)), total)
    exact_variance = Fraction(sum(w * (v - exact_mean) ** 2 for v, w in zip(values, weights) if w), total)

    summary = histograms.summarize_counts(counts)

    # Correctly rounded, so identical in every process whatever its BLAS threads.
    assert summary.mean_hu == float(exact_mean)
    assert summary.std_hu == float(np.sqrt(float(exact_variance)))


def test_summarize_counts_mode_tie_takes_lowest():
    summary = histograms.summarize_counts(histograms.value_counts(np.array([5, 5, -2, -2, 9], dtype=np.int16)))

    assert summary.mode_hu == -2
    with pytest.raises(LunaError, match="empty"):
        histograms.summarize_counts(np.zeros(histograms.N_VALUES, dtype=np.int64))


def test_plot_hu_histogram_marks_tissues():
    edges = histograms.HU_BIN_EDGES
    figure, ax = histograms.plot_hu_histogram(edges, np.ones(len(edges) - 1), hu_range=(-1200, 1200))

    positions = sorted(line.get_xdata()[0] for line in ax.get_lines())
    assert positions == [-1000, -100, 40, 700]
    assert ax.get_yscale() == "log"
    assert ax.get_xlim() == (-1200, 1200)
    assert ax.get_xlabel() == "Hounsfield units (HU)"
    with pytest.raises(LunaError, match="needs 4 edges"):
        histograms.plot_hu_histogram([0, 1], [1, 2, 3])
    plt.close("all")


def test_plot_scan_histograms_rows_and_scale():
    edges = np.array([-20, -10, 0, 10])
    per_scan = np.array([[0, 9, 99], [999, 0, 0]])

    figure, ax = histograms.plot_scan_histograms(edges, per_scan, ["a", "b"])

    image = ax.get_images()[0]
    np.testing.assert_allclose(image.get_array(), [[0, 1, 2], [3, 0, 0]])
    assert image.get_extent() == [-20, 10, 1.5, -0.5]
    assert [label.get_text() for label in ax.get_yticklabels()] == ["a", "b"]
    with pytest.raises(LunaError, match="per_scan must have shape"):
        histograms.plot_scan_histograms(edges, np.zeros((2, 4)))
    plt.close("all")


def test_plot_distributions_share_bins():
    import pandas as pd

    tables = {"small": pd.DataFrame({"n": [1, 2, 3]}), "large": pd.DataFrame({"n": [2, 4, 6, 8, 10]})}

    figure, axes = histograms.plot_distributions(tables, {"n": "slices"}, bins=9)

    first, second = axes[0].patches
    assert first.get_label() == "small (3)"
    assert second.get_label() == "large (5)"
    assert axes[0].get_xlabel() == "slices"
    plt.close("all")
