"""Tests of the LUNA16 catalog, manifests, selection and Zenodo file-list merging."""

from __future__ import annotations

import logging

import pytest

from luna_utils.acquire.catalog import (
    RECORD_PART1,
    RECORD_PART2,
    CatalogEntry,
    apply_remote_files,
    catalog_table,
    load_manifest,
    luna16_catalog,
    select_entries,
    zenodo_file_url,
)
from luna_utils.acquire.errors import AcquireError
from luna_utils.dataset import load_real_table


def test_catalog_lists_sixteen_files_in_two_records():
    entries = luna16_catalog()
    by_record = {record: sorted(e.name for e in entries if e.record == record) for record in (RECORD_PART1, RECORD_PART2)}

    assert len(entries) == 16
    assert by_record[RECORD_PART2] == ["subset7.zip", "subset8.zip", "subset9.zip"]
    assert len(by_record[RECORD_PART1]) == 13
    assert "seg-lungs-LUNA16.zip" in by_record[RECORD_PART1]


def test_catalog_subset_sizes_and_checksums():
    entries = {entry.name: entry for entry in luna16_catalog()}
    subsets = [entries[f"subset{n}.zip"] for n in range(10)]

    assert sum(entry.size for entry in subsets) == 66_337_930_718
    assert entries["subset5.zip"].md5 == "395ec714c4123cf213fb7b08f05ee9cc"
    assert entries["candidates.csv"].md5 is None
    assert entries["seg-lungs-LUNA16.zip"].size is None


def test_catalog_extracted_sizes_come_from_scan_table():
    scans = load_real_table("luna16_scans_metadata")
    subset0 = next(entry for entry in luna16_catalog() if entry.name == "subset0.zip")
    raw_bytes = int(scans.loc[scans["subset"] == 0, "raw_bytes"].sum())
    n_scans = int((scans["subset"] == 0).sum())

    assert subset0.extracted_bytes == raw_bytes + 400 * n_scans
    assert subset0.description.startswith(f"{n_scans} CT scans")


def test_extracted_estimate_rules():
    assert CatalogEntry("a.csv", size=10).extracted_estimate() == 0
    assert CatalogEntry("a.zip", size=10).extracted_estimate() == 20
    assert CatalogEntry("a.zip", size=10, extracted_bytes=7).extracted_estimate() == 7
    assert CatalogEntry("a.zip").extracted_estimate() == 0


def test_catalog_table_columns():
    table = catalog_table(luna16_catalog())

    assert list(table.columns) == ["name", "record", "size", "md5", "extracted_bytes", "description"]
    assert table["size"].isna().sum() == 4


def test_zenodo_file_url():
    url = zenodo_file_url("3723295", "subset0.zip")

    assert url == "https://zenodo.org/records/3723295/files/subset0.zip?download=1"


def test_load_manifest_reads_optional_columns(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("name,size,md5\nsubset0.zip,1_000,MD5:" + "A" * 32 + "\nnotes.txt,,\n")

    entries = load_manifest(path)

    assert entries[0] == CatalogEntry("subset0.zip", None, 1000, "a" * 32, "from the manifest", None)
    assert entries[1].size is None
    assert entries[1].md5 is None
    assert entries[1].extracted_bytes == 0


def test_load_manifest_with_names_only(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("name\na.csv\n")

    assert [entry.name for entry in load_manifest(path)] == ["a.csv"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("name,size,md5\n../x.zip,,\n", "line 2: file name '../x.zip' is invalid"),
        ("name,size,md5\nsub/x.zip,,\n", "is invalid"),
        ("name,size,md5\nx.zip,12a,\n", "size '12a' is not a whole number"),
        ("name,size,md5\nx.zip,-5,\n", "size '-5' is not a whole number"),
        ("name,size,md5\nx.zip,,abc\n", "md5 'abc' is not 32 hexadecimal digits"),
        ("name,size,md5\nx.zip,,\ny.zip,,\nx.zip,,\n", "line 4: 'x.zip' is listed twice"),
        ("file,size\nx.zip,1\n", "has no 'name' column"),
        ("", "not a valid CSV file"),
    ],
)
def test_load_manifest_rejects_invalid_rows(tmp_path, text, message):
    path = tmp_path / "manifest.csv"
    path.write_text(text)

    with pytest.raises(AcquireError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_manifest(path)


def test_load_manifest_missing_file(tmp_path):
    with pytest.raises(AcquireError, match="does not exist"):
        load_manifest(tmp_path / "absent.csv")


def test_select_entries():
    entries = luna16_catalog()

    assert select_entries(entries) == entries
    chosen = select_entries(entries, subsets=[9, 0], files=["annotations.csv", "subset0.zip"])
    assert [entry.name for entry in chosen] == ["annotations.csv", "subset0.zip", "subset9.zip"]
    with pytest.raises(AcquireError, match=r"Subset 10 is not available; the subsets are \[0, 1"):
        select_entries(entries, subsets=[10])
    with pytest.raises(AcquireError, match="'subset0' is not in the catalog"):
        select_entries(entries, files=["subset0"])


def test_remote_values_win_and_differences_are_logged(caplog):
    entries = [
        CatalogEntry("subset5.zip", RECORD_PART1, 10, "a" * 32),
        CatalogEntry("candidates.csv", RECORD_PART1, None, None),
        CatalogEntry("extra.csv", RECORD_PART1, 3, None),
        CatalogEntry("subset7.zip", RECORD_PART2, 5, "c" * 32),
    ]
    listings = {RECORD_PART1: {"subset5.zip": (10, "b" * 32), "candidates.csv": (99, "d" * 32)}}

    with caplog.at_level(logging.INFO, logger="luna_utils.acquire.catalog"):
        updated = apply_remote_files(entries, listings)

    assert updated[0] == CatalogEntry("subset5.zip", RECORD_PART1, 10, "b" * 32)
    assert (updated[1].size, updated[1].md5) == (99, "d" * 32)
    assert updated[2] == entries[2]
    assert updated[3] == entries[3]  # no listing for this record
    assert "Zenodo lists subset5.zip with md5 " + "b" * 32 in caplog.text
    assert "subset5.zip with size" not in caplog.text
    assert "does not list extra.csv" in caplog.text
    assert "Zenodo provides the size of candidates.csv" in caplog.text
