"""Download, verify and extract LUNA16: resumable, checksummed, restartable.

Typical use, from the command line::

    python -m luna_utils.acquire --dest /data/luna16 --subsets 0

or from Python, which returns the final table as a DataFrame::

    from luna_utils.acquire import acquire
    table = acquire("/data/luna16", subsets=[0])

Modules:

* `catalog`: the files, their sizes and MD5s;
* `sources`: Zenodo, an HTTP mirror or a local folder;
* `download`: resumable transfers with retries;
* `verify`: size and MD5 checks;
* `extract`: safe, restartable ZIP extraction;
* `pipeline`: the whole run;
* `mirror`: packing a dataset as a mirror;
* `cli`: the command line.
"""

from luna_utils.acquire.catalog import CatalogEntry, catalog_table, load_manifest, luna16_catalog, select_entries
from luna_utils.acquire.download import RetryPolicy
from luna_utils.acquire.errors import AcquireError, UnsafeArchiveError
from luna_utils.acquire.mirror import ensure_sample_mirror, write_mirror
from luna_utils.acquire.pipeline import acquire, plan_table

__all__ = [
    "AcquireError",
    "CatalogEntry",
    "RetryPolicy",
    "UnsafeArchiveError",
    "acquire",
    "catalog_table",
    "ensure_sample_mirror",
    "load_manifest",
    "luna16_catalog",
    "plan_table",
    "select_entries",
    "write_mirror",
]
