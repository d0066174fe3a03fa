"""Tests for the synthetic LUNA16 sample: layout, geometry, ground truth, determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from luna_utils import dataset, geometry, mhd
from luna_utils.errors import DatasetError
from luna_utils.matching import hit_matrix
from luna_utils.phantom import (
    LEFT_LUNG_LABEL,
    RIGHT_LUNG_LABEL,
    TISSUE_CODES,
    ScanGeometry,
    _Grid,
    _draw_nodule_diameter_mm,
    make_phantom,
    render_tube,
)
from luna_utils.sample import (
    MHD_KEYS,
    SAMPLE_UID_ROOT,
    SERIESUID_LENGTH,
    format_mhd_header,
    generate_sample,
    geometry_from_real_row,
    plan_sample,
)
from luna_utils.sample_tables import format_csv, label_candidates, quantize

N_SCANS = 3
SEED = 0
COORDS = ["coordX", "coordY", "coordZ"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A small sample, with the phantoms of its scans (their label maps are not saved to disk)."""
    phantoms = []
    root = generate_sample(
        tmp_path_factory.mktemp("sample") / "luna",
        n_scans=N_SCANS,
        seed=SEED,
        on_scan=lambda plan, phantom: phantoms.append(phantom),
    )
    return root, phantoms


@pytest.fixture(scope="module")
def sample_dir(generated) -> Path:
    return generated[0]


@pytest.fixture(scope="module")
def phantoms(generated):
    return generated[1]


@pytest.fixture(scope="module")
def plans():
    return plan_sample(N_SCANS, SEED)


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


# Layout and files


def test_layout_has_every_luna16_file(sample_dir, plans):
    expected = [
        "annotations.csv",
        "candidates.csv",
        "candidates_V2/candidates_V2.csv",
        "evaluationScript/annotations/annotations.csv",
        "evaluationScript/annotations/annotations_excluded.csv",
        "evaluationScript/annotations/seriesuids.csv",
        "sampleSubmission.csv",
        "SYNTHETIC_SAMPLE.txt",
        "synthetic/nodules.csv",
        "synthetic/candidate_kinds.csv",
    ]
    for plan in plans:
        expected += [
            f"subset{plan.subset}/{plan.seriesuid}.mhd",
            f"subset{plan.subset}/{plan.seriesuid}.raw",
            f"seg-lungs-LUNA16/{plan.seriesuid}.mhd",
            f"seg-lungs-LUNA16/{plan.seriesuid}.zraw",
        ]
    missing = [name for name in expected if not (sample_dir / name).is_file()]
    assert missing == []
    leftovers = [path.name for path in sample_dir.rglob("*") if path.name.startswith(".")]
    assert leftovers == []


def test_scans_spread_over_subsets_round_robin():
    assert [plan.subset for plan in plan_sample(3, SEED)] == [0, 1, 2]
    counts = pd.Series([plan.subset for plan in plan_sample(20, SEED)]).value_counts()
    assert sorted(counts.index) == list(range(10))
    assert set(counts) == {2}


def test_dataset_module_lists_the_sample(sample_dir, plans):
    scans = dataset.list_scans(sample_dir)
    assert sorted(scans["seriesuid"]) == sorted(plan.seriesuid for plan in plans)
    assert dataset.load_seriesuids(sample_dir) == [plan.seriesuid for plan in plans]
    assert dataset.is_sample(sample_dir)


def test_headers_have_real_keys_in_order(sample_dir):
    real_header = next((dataset.real_reference_dir() / "mhd_headers").glob("*.mhd"))
    real_keys = list(mhd.parse_header_text(real_header))
    assert list(MHD_KEYS) == real_keys
    for path in sorted(sample_dir.glob("subset*/*.mhd")):
        assert list(mhd.parse_header_text(path)) == real_keys, path.name


def test_raw_size_matches_header(sample_dir):
    for path in sorted(sample_dir.glob("subset*/*.mhd")):
        header = mhd.read_header(path)
        assert header.element_type == "MET_SHORT"
        assert header.data_file.stat().st_size == header.expected_data_bytes


def test_scans_read_back_with_planned_geometry(sample_dir, plans, phantoms):
    for plan, phantom in zip(plans, phantoms):
        path = sample_dir / f"subset{plan.subset}" / f"{plan.seriesuid}.mhd"
        image = sitk.ReadImage(str(path))
        assert image.GetPixelID() == sitk.sitkInt16
        assert np.allclose(image.GetSpacing(), plan.geometry.spacing_xyz_mm, atol=1e-9)
        assert np.allclose(image.GetOrigin(), plan.geometry.origin_xyz_mm, atol=1e-9)
        assert np.allclose(image.GetDirection(), plan.geometry.direction, atol=1e-12)

        scan = mhd.read_scan(path)
        assert scan.shape_zyx == plan.geometry.shape_zyx
        assert scan.seriesuid == plan.seriesuid
        assert np.array_equal(scan.array, phantom.hu_zyx)


def test_raw_is_little_endian_int16(sample_dir, plans, phantoms):
    plan, phantom = plans[0], phantoms[0]
    raw = sample_dir / f"subset{plan.subset}" / f"{plan.seriesuid}.raw"
    values = np.fromfile(raw, dtype="<i2").reshape(plan.geometry.shape_zyx)
    assert np.array_equal(values, phantom.hu_zyx)


def test_header_text_is_deterministic():
    scan_geometry = ScanGeometry((10, 20, 30), (0.7, 0.7, 2.5), (-195.0, 10.25, -335.5), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    text = format_mhd_header(scan_geometry, "a.raw")
    assert "TransformMatrix = -1 0 0 0 -1 0 0 0 1\n" in text
    assert "Offset = -195 10.25 -335.5\n" in text
    assert "DimSize = 30 20 10\n" in text
    assert "AnatomicalOrientation = LPI\n" in text
    assert text == format_mhd_header(scan_geometry, "a.raw")


# Series UIDs


def test_seriesuids_use_example_root(plans):
    uids = [plan.seriesuid for plan in plans]
    assert all(uid.startswith(SAMPLE_UID_ROOT) for uid in uids)
    assert all(len(uid) == SERIESUID_LENGTH for uid in uids)
    assert len(set(uids)) == len(uids)
    for uid in uids:
        components = uid.split(".")
        assert all(part.isdigit() and (part == "0" or not part.startswith("0")) for part in components)


# Geometry


def test_default_sample_has_flipped_scan():
    default_plans = plan_sample(20, 0)
    flipped = [plan for plan in default_plans if plan.is_flipped]
    assert len(flipped) >= 1
    for plan in flipped:
        assert np.allclose(plan.geometry.direction_matrix, np.diag([-1.0, -1.0, 1.0]))
    assert any(plan.geometry.spacing_xyz_mm[2] < 1.0 for plan in default_plans)


def test_default_sample_scans_stay_small():
    for plan in plan_sample(20, 0):
        nz, ny, nx = plan.geometry.shape_zyx
        assert 160 <= nx <= 224
        assert nx == ny
        assert nz * ny * nx * 2 <= 15_000_000
        assert 0.45 <= plan.geometry.spacing_xyz_mm[2] <= 2.5


def test_geometry_keeps_real_center_on_flipped_row():
    table = dataset.load_real_table("luna16_scans_metadata")
    row = table[table["flip_x"] < 0].iloc[0]
    scan_geometry = geometry_from_real_row(row, np.random.default_rng(0))

    spacing = np.array([row["sp_x"], row["sp_y"], row["sp_z"]])
    size = np.array([row["dim_x"], row["dim_y"], row["n_slices"]])
    real_center = np.array([row["origin_x"], row["origin_y"], row["origin_z"]]) + np.array([-1, -1, 1]) * spacing * (size - 1) / 2
    assert np.allclose(scan_geometry.center_xyz_mm, real_center, atol=1e-5)

    # x and y indices run toward -x and -y in world space.
    first = geometry.voxel_to_world([0, 0, 0], scan_geometry.origin_xyz_mm, scan_geometry.spacing_xyz_mm, scan_geometry.direction)
    next_column = geometry.voxel_to_world([0, 0, 1], scan_geometry.origin_xyz_mm, scan_geometry.spacing_xyz_mm, scan_geometry.direction)
    next_row = geometry.voxel_to_world([0, 1, 0], scan_geometry.origin_xyz_mm, scan_geometry.spacing_xyz_mm, scan_geometry.direction)
    assert next_column[0] < first[0]
    assert next_row[1] < first[1]


def test_flipped_scan_world_points_map_inside(sample_dir, plans):
    plan = next(plan for plan in plans if plan.is_flipped)
    scan = mhd.read_scan(sample_dir / f"subset{plan.subset}" / f"{plan.seriesuid}.mhd")
    candidates = dataset.load_candidates(sample_dir, version=2)
    points = candidates.loc[candidates["seriesuid"] == plan.seriesuid, COORDS].to_numpy()
    assert points.shape[0] > 50
    index_zyx = scan.world_to_voxel(points)
    assert np.all(geometry.points_inside(index_zyx, scan.shape_zyx))


# Ground truth


def test_annotations_lie_on_nodule_voxels(sample_dir, plans, phantoms):
    annotations = dataset.load_annotations(sample_dir)
    assert len(annotations) > 0
    for plan, phantom in zip(plans, phantoms):
        rows = annotations[annotations["seriesuid"] == plan.seriesuid]
        assert len(rows) == len(phantom.nodules)
        g = plan.geometry
        index_zyx = geometry.world_to_voxel(rows[COORDS].to_numpy(), g.origin_xyz_mm, g.spacing_xyz_mm, g.direction)
        assert np.all(geometry.points_inside(index_zyx, g.shape_zyx))
        for z, y, x in geometry.round_to_voxel(index_zyx).reshape(-1, 3):
            assert phantom.nodule_labels_zyx[z, y, x] > 0
            assert phantom.tissue_zyx[z, y, x] == TISSUE_CODES["nodule"]


def test_nodule_label_ids_match_table_rows(phantoms):
    for phantom in phantoms:
        ids = set(np.unique(phantom.nodule_labels_zyx)) - {0}
        assert ids == set(range(1, len(phantom.nodules) + 1))


def test_annotation_diameters_in_luna16_range(sample_dir):
    nodules = pd.read_csv(sample_dir / "synthetic" / "nodules.csv")
    assert nodules["diameter_mm"].between(3.25, 30.0).all()
    assert set(nodules["nodule_type"]) <= {"solid", "part-solid", "ground-glass"}
    assert set(nodules["location"]) <= {"isolated", "juxta-pleural", "juxta-vascular"}


def test_nodule_diameters_are_mostly_small():
    rng = np.random.default_rng(0)
    diameters = np.array([_draw_nodule_diameter_mm(rng) for _ in range(4000)])
    assert diameters.min() >= 3.25
    assert diameters.max() <= 30.0
    assert 6.0 < np.median(diameters) < 7.0
    assert np.mean(diameters < 10.0) > 0.75


@pytest.mark.parametrize("version", [1, 2])
def test_candidate_classes_follow_hit_rule(sample_dir, version):
    candidates = dataset.load_candidates(sample_dir, version=version)
    annotations = dataset.load_annotations(sample_dir)
    assert set(candidates["class"]) == {0, 1}
    for uid, rows in candidates.groupby("seriesuid"):
        nodules = annotations[annotations["seriesuid"] == uid]
        hits = hit_matrix(rows[COORDS].to_numpy(), nodules[COORDS].to_numpy(), nodules["diameter_mm"].to_numpy())
        positive = rows["class"].to_numpy() == 1
        assert np.all(hits[positive].any(axis=1)), uid
        assert not np.any(hits[~positive]), uid


def test_v2_finds_every_nodule_and_is_longer(sample_dir):
    annotations = dataset.load_annotations(sample_dir)
    v1 = dataset.load_candidates(sample_dir, version=1)
    v2 = dataset.load_candidates(sample_dir, version=2)
    assert len(v2) > len(v1)
    for row in annotations.itertuples(index=False):
        points = v2.loc[v2["seriesuid"] == row.seriesuid, COORDS].to_numpy()
        assert hit_matrix(points, [[row.coordX, row.coordY, row.coordZ]], [row.diameter_mm]).any()


def test_candidate_counts_per_scan(sample_dir):
    for version in (1, 2):
        counts = dataset.load_candidates(sample_dir, version=version).groupby("seriesuid").size()
        assert counts.between(80, 300).all(), counts.to_dict()


def test_candidate_kinds_match_candidate_files(sample_dir):
    kinds = pd.read_csv(sample_dir / "synthetic" / "candidate_kinds.csv", dtype={"seriesuid": str})
    assert set(kinds["kind"]) <= {"nodule", "vessel", "bifurcation", "pleura", "bone", "airway", "other"}
    assert {"vessel", "bifurcation", "pleura"} <= set(kinds["kind"])
    assert ((kinds["kind"] == "nodule") == (kinds["class"] == 1)).all()
    for version in (1, 2):
        listed = dataset.load_candidates(sample_dir, version=version)
        subset = kinds[kinds["version"] == version].reset_index(drop=True)
        assert np.array_equal(subset[COORDS].to_numpy(), listed[COORDS].to_numpy())
        assert np.array_equal(subset["class"].to_numpy(), listed["class"].to_numpy())


def test_negative_candidates_lie_on_their_kind(sample_dir, plans, phantoms):
    kinds = pd.read_csv(sample_dir / "synthetic" / "candidate_kinds.csv", dtype={"seriesuid": str})
    for plan, phantom in zip(plans, phantoms):
        rows = kinds[(kinds["seriesuid"] == plan.seriesuid) & (kinds["kind"] == "vessel")]
        g = plan.geometry
        index = geometry.round_to_voxel(
            geometry.world_to_voxel(rows[COORDS].to_numpy(), g.origin_xyz_mm, g.spacing_xyz_mm, g.direction)
        )
        tissue = phantom.tissue_zyx[index[:, 0], index[:, 1], index[:, 2]]
        hu = phantom.hu_zyx[index[:, 0], index[:, 1], index[:, 2]]
        # Candidates are jittered by about 0.7 mm, so most, not all, land on the vessel itself.
        assert np.mean(hu > -600) > 0.6
        assert np.mean(tissue != TISSUE_CODES["air"]) == 1.0


def test_excluded_findings_are_drawn_and_some_unknown(sample_dir, plans, phantoms):
    excluded = dataset.load_excluded(sample_dir)
    assert len(excluded) > 0
    assert (excluded["diameter_mm"] == -1).any()
    for plan, phantom in zip(plans, phantoms):
        rows = excluded[excluded["seriesuid"] == plan.seriesuid]
        g = plan.geometry
        index = geometry.round_to_voxel(
            geometry.world_to_voxel(rows[COORDS].to_numpy(), g.origin_xyz_mm, g.spacing_xyz_mm, g.direction)
        ).reshape(-1, 3)
        values = phantom.hu_zyx[index[:, 0], index[:, 1], index[:, 2]]
        assert np.all(values > -700), values


def test_sample_submission_lists_v1_candidates(sample_dir):
    submission = pd.read_csv(sample_dir / "sampleSubmission.csv", dtype={"seriesuid": str})
    v1 = dataset.load_candidates(sample_dir, version=1)
    assert list(submission.columns) == ["seriesuid", *COORDS, "probability"]
    assert np.array_equal(submission[COORDS].to_numpy(), v1[COORDS].to_numpy())
    assert submission["probability"].between(0.0, 1.0).all()
    assert submission["probability"].nunique() > len(submission) // 2


def test_annotation_files_use_crlf_like_luna16(sample_dir):
    for name in ["annotations.csv", "evaluationScript/annotations/annotations_excluded.csv",
                 "evaluationScript/annotations/seriesuids.csv"]:
        data = (sample_dir / name).read_bytes()
        assert data.count(b"\r\n") == data.count(b"\n"), name
    uids = (sample_dir / "evaluationScript/annotations/seriesuids.csv").read_text().split()
    assert all(uid.startswith(SAMPLE_UID_ROOT) for uid in uids)
    assert (sample_dir / "annotations.csv").read_bytes() == (
        sample_dir / "evaluationScript/annotations/annotations.csv"
    ).read_bytes()


# Lung masks


def test_lung_masks_read_back_with_luna16_labels(sample_dir, plans):
    for plan in plans:
        mask_path = sample_dir / "seg-lungs-LUNA16" / f"{plan.seriesuid}.mhd"
        header = mhd.read_header(mask_path)
        assert header.compressed
        assert header.data_file.suffix == ".zraw"
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path)))
        scan = mhd.read_scan(sample_dir / f"subset{plan.subset}" / f"{plan.seriesuid}.mhd")
        assert mask.shape == scan.shape_zyx
        assert np.allclose(header.origin_xyz_mm, scan.origin_xyz_mm)
        assert np.allclose(header.direction, scan.direction)
        assert set(np.unique(mask)) <= {0, 3, 4, 5}
        assert {3, 4} <= set(np.unique(mask))
        assert np.median(scan.array[(mask == 3) | (mask == 4)]) < -700
        assert np.median(scan.array[mask == 0]) > -700 or np.mean(scan.array[mask == 0] < -900) > 0.3


def test_right_lung_label_on_patient_right(sample_dir, plans):
    for plan in plans:
        mask_path = sample_dir / "seg-lungs-LUNA16" / f"{plan.seriesuid}.mhd"
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path)))
        g = plan.geometry
        center_x = g.center_xyz_mm[0]
        for label, sign in ((RIGHT_LUNG_LABEL, -1.0), (LEFT_LUNG_LABEL, 1.0)):
            index = np.argwhere(mask == label)[::500]
            world = geometry.voxel_to_world(index, g.origin_xyz_mm, g.spacing_xyz_mm, g.direction)
            assert sign * (np.mean(world[:, 0]) - center_x) > 10.0, (plan.seriesuid, label)


# Determinism and interrupted runs


def test_same_seed_gives_identical_files(sample_dir, tmp_path):
    again = generate_sample(tmp_path / "again", n_scans=N_SCANS, seed=SEED)
    assert _tree_digest(again) == _tree_digest(sample_dir)


def test_other_seed_gives_other_sample(sample_dir, tmp_path):
    other = generate_sample(tmp_path / "other", n_scans=1, seed=SEED + 1)
    first = next(other.glob("subset0/*.raw"))
    assert first.name not in {path.name for path in sample_dir.glob("subset0/*.raw")}
    assert (other / "annotations.csv").read_bytes() != (sample_dir / "annotations.csv").read_bytes()


def test_missing_marker_means_incomplete(sample_dir, tmp_path):
    partial = generate_sample(tmp_path / "partial", n_scans=1, seed=SEED)
    assert dataset.is_sample(partial)
    (partial / dataset.SAMPLE_MARKER).unlink()
    assert not dataset.is_sample(partial)

    # Regenerating over the incomplete sample replaces it.
    generate_sample(partial, n_scans=1, seed=SEED)
    assert dataset.is_sample(partial)
    marker = (partial / dataset.SAMPLE_MARKER).read_text()
    assert "NOT PATIENT DATA" in marker
    assert "n_scans=1 seed=0" in marker


def test_replaces_interrupted_sample(tmp_path):
    folder = tmp_path / "interrupted"
    scans = folder / "subset0"
    scans.mkdir(parents=True)
    uid = SAMPLE_UID_ROOT + "1.2"
    (scans / f".{uid}.raw.abc.tmp").write_bytes(b"partial")
    (scans / f"{uid}.raw").write_bytes(b"partial")
    generate_sample(folder, n_scans=1)
    assert dataset.is_sample(folder)
    assert not (scans / f"{uid}.raw").exists()
    assert not (scans / f".{uid}.raw.abc.tmp").exists()


def test_refuses_real_scans(tmp_path):
    folder = tmp_path / "real"
    scans = folder / "subset0"
    scans.mkdir(parents=True)
    real_uid = "1.3.6.1.4.1.14519.5.2.1.6279.6001.105756658031515062000744821260"
    (scans / f"{real_uid}.raw").write_bytes(b"data")
    with pytest.raises(DatasetError, match="not empty"):
        generate_sample(folder, n_scans=1)
    assert (scans / f"{real_uid}.raw").read_bytes() == b"data"


def test_refuses_empty_layout_without_sample_files(tmp_path):
    folder = tmp_path / "skeleton"
    (folder / "subset0").mkdir(parents=True)
    (folder / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n")
    with pytest.raises(DatasetError, match="not empty"):
        generate_sample(folder, n_scans=1)
    assert (folder / "annotations.csv").is_file()


def test_refuses_folder_with_other_data(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not empty"):
        generate_sample(folder, n_scans=1)
    assert (folder / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("n_scans", [0, -3, 2.5])
def test_rejects_invalid_scan_count(n_scans):
    with pytest.raises(DatasetError, match="positive integer"):
        plan_sample(n_scans)


# Phantom


def _mirrored_geometry(scan_geometry: ScanGeometry) -> ScanGeometry:
    """Return the geometry covering the same world points with x and y indices reversed."""
    nz, ny, nx = scan_geometry.shape_zyx
    last = geometry.voxel_to_world([0, ny - 1, nx - 1], scan_geometry.origin_xyz_mm, scan_geometry.spacing_xyz_mm)
    return ScanGeometry(
        scan_geometry.shape_zyx, scan_geometry.spacing_xyz_mm, tuple(last), (-1, 0, 0, 0, -1, 0, 0, 0, 1)
    )


def test_phantom_follows_world_not_array_order():
    plain = ScanGeometry((40, 96, 96), (1.4, 1.4, 2.5), (-66.5, -66.5, -50.0))
    mirrored = _mirrored_geometry(plain)
    first = make_phantom(plain, np.random.default_rng(5), n_nodules=0, fov_circle=False)
    second = make_phantom(mirrored, np.random.default_rng(5), n_nodules=0, fov_circle=False)
    # The vessel trees come first and are grown in world space. The scattered twigs after them
    # start at voxel positions, which differ between the two grids.
    assert np.allclose(first.vessel_segments[:300], second.vessel_segments[:300])
    agreement = np.mean(first.lung_labels_zyx == second.lung_labels_zyx[:, ::-1, ::-1])
    assert agreement > 0.999


def test_phantom_heart_on_patient_left():
    scan_geometry = ScanGeometry((40, 96, 96), (1.4, 1.4, 2.5), (66.5, 66.5, -50.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    phantom = make_phantom(scan_geometry, np.random.default_rng(1), n_nodules=0)
    index = np.argwhere(phantom.tissue_zyx == TISSUE_CODES["heart"])[::50]
    world = geometry.voxel_to_world(index, scan_geometry.origin_xyz_mm, scan_geometry.spacing_xyz_mm, scan_geometry.direction)
    assert np.mean(world[:, 0]) > scan_geometry.center_xyz_mm[0]


def test_phantom_tissue_values():
    scan_geometry = ScanGeometry((50, 128, 128), (1.1, 1.1, 2.5), (-70.0, -70.0, -60.0))
    phantom = make_phantom(scan_geometry, np.random.default_rng(2), n_nodules=2, fov_circle=True)
    hu, tissue = phantom.hu_zyx, phantom.tissue_zyx
    assert -900 < np.median(hu[tissue == TISSUE_CODES["lung"]]) < -800
    assert -150 < np.median(hu[tissue == TISSUE_CODES["fat"]]) < -50
    assert 0 < np.median(hu[tissue == TISSUE_CODES["muscle"]]) < 80
    assert np.median(hu[tissue == TISSUE_CODES["bone"]]) > 200
    assert np.median(hu[tissue == TISSUE_CODES["air"]]) < -950
    assert np.all(hu[tissue == TISSUE_CODES["outside_fov"]] == -2000)
    assert np.any(tissue == TISSUE_CODES["airway_lumen"])
    assert np.any(phantom.lung_labels_zyx == 5)


def test_thin_vessels_render_fainter_in_thick_slices():
    scan_geometry = ScanGeometry((21, 41, 41), (0.5, 0.5, 2.5), (-10.0, -10.0, -25.0))
    grid = _Grid(scan_geometry)
    blur = np.array([0.25, 0.25, 1.1])
    peaks = []
    for radius in (0.3, 0.8, 2.5):
        _slices, fraction, _inside = render_tube(grid, np.array([-8.0, 0, 0]), np.array([8.0, 0, 0]), radius, radius, blur)
        peaks.append(float(fraction.max()))
    assert peaks[0] < peaks[1] < peaks[2]
    assert peaks[0] < 0.3
    assert peaks[2] > 0.9


def test_vessel_between_slices_stays_visible():
    scan_geometry = ScanGeometry((9, 41, 41), (0.5, 0.5, 2.5), (-10.0, -10.0, -10.0))
    grid = _Grid(scan_geometry)
    # A thin vessel running along x midway between two slice centres.
    rendered = render_tube(grid, np.array([-8.0, 0.0, 1.25]), np.array([8.0, 0.0, 1.25]), 0.5, 0.5, np.array([0.25, 0.25, 1.1]))
    _slices, fraction, inside = rendered
    assert not inside.any()
    assert fraction.max() > 0.05


# Tables


def test_label_candidates_strict_radius():
    centers = np.array([[0.0, 0.0, 0.0]])
    points = np.array([[2.0, 0.0, 0.0], [1.999999, 0.0, 0.0], [0.0, 0.0, 9.0]])
    assert label_candidates(points, centers, np.array([4.0])).tolist() == [0, 1, 0]
    assert label_candidates(points, np.zeros((0, 3)), np.zeros(0)).tolist() == [0, 0, 0]
    assert label_candidates(np.zeros((0, 3)), centers, np.array([4.0])).tolist() == []


def test_quantize_matches_csv_round_trip():
    values = np.array([-128.69942112345, 0.1234565, 1e-7, -0.0000004])
    text = format_csv(pd.DataFrame({"value": values}))
    read_back = pd.read_csv(pd.io.common.StringIO(text))["value"].to_numpy()
    assert np.array_equal(quantize(values), read_back)


def test_format_csv_fixed_decimals_and_unknown_diameter():
    frame = pd.DataFrame({"seriesuid": ["a", "b"], "coordX": [1.5, -2.0], "diameter_mm": [-1.0, 3.25], "class": [0, 1]})
    assert format_csv(frame) == "seriesuid,coordX,diameter_mm,class\na,1.500000,-1,0\nb,-2.000000,3.250000,1\n"
    assert format_csv(frame, line_ending="\r\n").count("\r\n") == 3
    assert format_csv(frame.iloc[:0]) == "seriesuid,coordX,diameter_mm,class\n"
