"""Grouping the rows of a seriesuid column by string object, to avoid hashing every row.

A submission repeats each scan's seriesuid on hundreds of rows. A pandas column of such strings
usually stores far fewer distinct str objects than rows, because `pandas.read_csv` reuses one
object per distinct value within each chunk it parses, and a scalar broadcast into a column is
one object. With pandas 3.1, the 754,975 rows of the benchmark submission read back from CSV
hold 21,301 objects.

Rows are therefore grouped by object identity (the address an object array stores for each
element), which needs no string hashing or comparison, and only one row per object is looked at
by value. `scan_codes` returns what `Index.get_indexer` returns for every input, and
`distinct_uids` every value that `pd.unique` returns. Only the speed depends on how many
distinct objects the column holds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import NDArray

# Rows sampled to decide whether grouping by object pays off.
SAMPLE_ROWS = 4096


def scan_codes(values: pd.Series, scan_index: pd.Index) -> NDArray[np.intp]:
    """Return the position of each value in `scan_index`, or -1 for a value not in it.

    Args:
        values: Shape (N,), seriesuid per row.
        scan_index: The evaluated seriesuids, without duplicates.

    Returns:
        Shape (N,), the same as `scan_index.get_indexer(values)`.
    """
    groups = _group_by_object(values)
    if groups is None:
        return scan_index.get_indexer(values)
    object_codes, objects = groups
    object_scans = scan_index.get_indexer(pd.Series(objects, dtype=values.dtype))
    return object_scans[object_codes]


def distinct_uids(values: pd.Series) -> NDArray[np.object_]:
    """Return one value per distinct object of the column: every distinct value, some possibly twice.

    Args:
        values: Shape (N,), seriesuid per row.
    """
    groups = _group_by_object(values)
    if groups is None:
        return np.asarray(pd.unique(values), dtype=object)
    return groups[1]


def _group_by_object(values: pd.Series) -> tuple[NDArray[np.intp], NDArray[np.object_]] | None:
    """Return (group code per row, one value per group) for rows grouped by object identity.

    Returns None for columns without Python objects to group, such as Arrow-backed strings;
    pandas handles those directly.
    """
    if not isinstance(values.array, pd.arrays.NumpyExtensionArray):
        return None
    objects = np.ascontiguousarray(values.to_numpy())
    if objects.dtype != object:
        return None

    # Codes per distinct object. `objects` holds a reference to every object until the end, so no
    # address can be freed and reused by another object meanwhile.
    addresses = _object_addresses(objects)
    if _mostly_distinct(addresses):
        return None
    object_codes, distinct = pd.factorize(addresses)

    # One row of each object; any row of the group will do.
    representative_rows = np.empty(len(distinct), dtype=np.intp)
    representative_rows[object_codes] = np.arange(len(objects))
    return object_codes, objects[representative_rows]


def _mostly_distinct(addresses: NDArray[np.intp]) -> bool:
    """Return True when the first rows hold more distinct objects than half their number.

    Grouping then saves little hashing and costs an extra pass, as for strings parsed one row at
    a time: pandas is faster on those. The sample is contiguous because `read_csv` shares objects
    only within each chunk it parses, so rows far apart rarely share one.
    """
    sample = addresses[:SAMPLE_ROWS]
    return len(pd.unique(sample)) > len(sample) // 2


def _object_addresses(objects: NDArray[np.object_]) -> NDArray[np.intp]:
    """Return a read-only view of the object pointers that a contiguous object array stores.

    The view shares memory with `objects` without keeping it alive: the caller must hold
    `objects` while it uses the view.
    """
    interface = {
        "data": (objects.ctypes.data, True),  # True: read-only
        "shape": objects.shape,
        "typestr": np.dtype(np.intp).str,
        "version": 3,
    }
    return np.asarray(_ArrayInterface(interface))


class _ArrayInterface:
    """Expose a memory block to NumPy through the array interface protocol."""

    def __init__(self, interface: dict) -> None:
        self.__array_interface__ = interface
