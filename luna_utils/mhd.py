"""Reading LUNA16 MetaImage scans (`.mhd` header + `.raw` data, or a single `.mha`).

Arrays come back in NumPy order (z, y, x) exactly as stored on disk; geometry comes back in world
order (x, y, z) in millimetres. Nothing is flipped or reoriented: the direction matrix is kept and
used by the coordinate conversions in `luna_utils.geometry`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike, NDArray

from luna_utils import geometry
from luna_utils.errors import MhdError

logger = logging.getLogger(__name__)

# Bytes per voxel component for each MetaImage ElementType.
ELEMENT_BYTES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG": 8,
    "MET_ULONG": 8,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}

METAIMAGE_SUFFIXES = (".mhd", ".mha")


@dataclass(frozen=True)
class MhdHeader:
    """Geometry and metadata of a MetaImage file, read without its voxels.

    Attributes:
        path: The header file.
        size_xyz: Number of voxels along x, y and z (the header's DimSize order).
        spacing_xyz_mm: Voxel size along x, y and z in millimetres.
        origin_xyz_mm: World position of voxel (0, 0, 0), LPS millimetres (x, y, z).
        direction: 3x3 direction matrix; its columns are the image axes in world space.
        element_type: MetaImage ElementType, for example "MET_SHORT".
        data_file: The file holding the voxels (the header itself for `.mha` with LOCAL data).
        compressed: Whether the voxel data is zlib-compressed (CompressedData = True).
        expected_data_bytes: Uncompressed size of the voxel data in bytes:
            product of DimSize x bytes per element x components.
        keys: Every key of the header text, in file order, with its raw string value.
    """

    path: Path
    size_xyz: tuple[int, int, int]
    spacing_xyz_mm: tuple[float, float, float]
    origin_xyz_mm: tuple[float, float, float]
    direction: NDArray[np.float64]
    element_type: str
    data_file: Path
    compressed: bool
    expected_data_bytes: int
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """Array shape in NumPy order (z, y, x)."""
        return (self.size_xyz[2], self.size_xyz[1], self.size_xyz[0])

    @property
    def seriesuid(self) -> str:
        """The file name without its suffix, which LUNA16 uses as the scan id."""
        return self.path.stem


def _check_suffix(path: Path) -> None:
    if path.suffix.lower() not in METAIMAGE_SUFFIXES:
        raise MhdError(
            f"{path} is not a MetaImage header: expected a .mhd or .mha file, got suffix "
            f"{path.suffix!r}. Pass the .mhd file, not the .raw data file."
        )
    if not path.is_file():
        raise MhdError(f"{path} does not exist. Check the path or the LUNA16_DIR setting.")


def parse_header_text(path: Path) -> dict[str, str]:
    """Read the `key = value` lines of a MetaImage header into a dict, in file order.

    For a `.mha` file, reading stops at ElementDataFile, after which the binary data starts.

    Raises:
        MhdError: If the header cannot be decoded as text.
    """
    keys: dict[str, str] = {}
    with open(path, "rb") as handle:
        for raw_line in handle:
            try:
                line = raw_line.decode("ascii").strip()
            except UnicodeDecodeError as error:
                raise MhdError(
                    f"{path} has a header line that is not ASCII text ({error}); "
                    "the file is not a MetaImage header or is damaged."
                ) from error
            if not line:
                continue
            key, separator, value = line.partition("=")
            if not separator:
                raise MhdError(f"{path}: header line {line!r} is not of the form 'Key = Value'.")
            keys[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break
    return keys


def read_header(path: str | Path) -> MhdHeader:
    """Read the geometry and metadata of a scan without reading its voxels.

    Uses SimpleITK's `ImageFileReader.ReadImageInformation` for the geometry, and the header text
    for the data file name and every key. The data file need not exist.

    Args:
        path: A `.mhd` or `.mha` file.

    Returns:
        The header, with sizes and spacing in (x, y, z) order.

    Raises:
        MhdError: If the path is not a `.mhd`/`.mha` file, the header is invalid, or the image is
            not 3-D.
    """
    path = Path(path)
    _check_suffix(path)
    keys = parse_header_text(path)

    for required in ("NDims", "DimSize", "ElementType", "ElementDataFile"):
        if required not in keys:
            raise MhdError(f"{path}: required header key {required!r} is missing.")
    if keys["NDims"] != "3":
        raise MhdError(
            f"{path}: NDims = {keys['NDims']}, but a CT scan must be a 3-D image. "
            "Pass a 3-D volume."
        )

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise MhdError(f"{path}: SimpleITK could not read the header: {error}") from error

    element_type = keys["ElementType"]
    if element_type not in ELEMENT_BYTES:
        raise MhdError(f"{path}: unknown ElementType {element_type!r}.")
    components = int(keys.get("ElementNumberOfChannels", "1"))
    size_xyz = tuple(int(value) for value in reader.GetSize())
    expected = int(np.prod(size_xyz)) * ELEMENT_BYTES[element_type] * components

    data_name = keys["ElementDataFile"]
    data_file = path if data_name.upper() == "LOCAL" else path.parent / data_name

    return MhdHeader(
        path=path,
        size_xyz=size_xyz,  # type: ignore[arg-type]
        spacing_xyz_mm=tuple(float(value) for value in reader.GetSpacing()),  # type: ignore[arg-type]
        origin_xyz_mm=tuple(float(value) for value in reader.GetOrigin()),  # type: ignore[arg-type]
        direction=np.asarray(reader.GetDirection(), dtype=np.float64).reshape(3, 3),
        element_type=element_type,
        data_file=data_file,
        compressed=keys.get("CompressedData", "False").lower() == "true",
        expected_data_bytes=expected,
        keys=keys,
    )


def check_data_file(header: MhdHeader) -> None:
    """Check that a header's data file exists and is large enough for its DimSize.

    Compressed data (`.zraw`) is only checked for existence, since its compressed size is not
    known from DimSize.

    Raises:
        MhdError: If the data file is missing or shorter than the header requires.
    """
    if not header.data_file.is_file():
        raise MhdError(
            f"{header.path} names the data file {header.data_file.name!r} (ElementDataFile), "
            f"but {header.data_file} does not exist. Copy or extract the data file next to the "
            "header."
        )
    if header.compressed:
        return

    actual = header.data_file.stat().st_size
    if header.data_file == header.path:
        # In a .mha file the voxels follow the header text.
        expected_total = _header_length(header.path) + header.expected_data_bytes
    else:
        expected_total = header.expected_data_bytes
    if actual < expected_total:
        raise MhdError(
            f"{header.data_file} is truncated: the header {header.path.name} requires "
            f"{expected_total} bytes (DimSize {' x '.join(map(str, header.size_xyz))} of "
            f"{header.element_type}), but the file has {actual} bytes. Download or extract it again."
        )


def _header_length(path: Path) -> int:
    """Return the byte offset where the voxels start in a `.mha` file."""
    with open(path, "rb") as handle:
        for line in handle:
            if line.split(b"=", 1)[0].strip() == b"ElementDataFile":
                return handle.tell()
    raise MhdError(f"{path}: header key 'ElementDataFile' is missing.")


@dataclass
class CtScan:
    """A CT volume with its geometry.

    Attributes:
        array: Voxels in NumPy order (z, y, x) as stored; int16 Hounsfield units for LUNA16.
        spacing_xyz_mm: Voxel size along x, y and z in millimetres.
        origin_xyz_mm: World position of voxel (0, 0, 0), LPS millimetres (x, y, z).
        direction: 3x3 direction matrix; its columns are the image axes in world space.
        seriesuid: The scan id (the file name without its suffix).
        path: The header file it was read from, or None for a scan built in memory.
    """

    array: NDArray
    spacing_xyz_mm: tuple[float, float, float]
    origin_xyz_mm: tuple[float, float, float]
    direction: NDArray[np.float64]
    seriesuid: str
    path: Path | None = None

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """Array shape in NumPy order (z, y, x)."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def is_flipped(self) -> bool:
        """Whether any image axis points against its world axis (a negative diagonal entry)."""
        return bool(np.any(np.diag(self.direction) < 0))

    def world_to_voxel(self, points_xyz_mm: ArrayLike) -> NDArray[np.float64]:
        """Convert world points (x, y, z) mm, shape (3,) or (N, 3), to continuous (z, y, x) indices."""
        return geometry.world_to_voxel(
            points_xyz_mm, self.origin_xyz_mm, self.spacing_xyz_mm, self.direction
        )

    def voxel_to_world(self, points_zyx: ArrayLike) -> NDArray[np.float64]:
        """Convert (z, y, x) indices, shape (3,) or (N, 3), to world points (x, y, z) mm."""
        return geometry.voxel_to_world(
            points_zyx, self.origin_xyz_mm, self.spacing_xyz_mm, self.direction
        )

    def contains(self, points_xyz_mm: ArrayLike) -> NDArray[np.bool_] | bool:
        """Test whether world points (x, y, z) mm fall on a stored voxel of this scan."""
        return geometry.points_inside(self.world_to_voxel(points_xyz_mm), self.shape_zyx)

    def to_sitk(self) -> sitk.Image:
        """Return the scan as a SimpleITK image with the same geometry."""
        image = sitk.GetImageFromArray(self.array)
        image.SetSpacing(tuple(float(v) for v in self.spacing_xyz_mm))
        image.SetOrigin(tuple(float(v) for v in self.origin_xyz_mm))
        image.SetDirection(tuple(float(v) for v in np.asarray(self.direction).reshape(-1)))
        return image


def read_image(path: str | Path) -> tuple[MhdHeader, sitk.Image]:
    """Read a scan as a SimpleITK image, after checking its header and data file.

    Args:
        path: A `.mhd` (with its data file beside it) or `.mha` file.

    Returns:
        The header and the image; voxels stay in SimpleITK's buffer, (x, y, z) indexed.

    Raises:
        MhdError: On a wrong suffix, a missing or truncated data file, a non-3-D image, or data
            SimpleITK cannot decode.
    """
    header = read_header(path)
    check_data_file(header)

    try:
        image = sitk.ReadImage(str(header.path))
    except RuntimeError as error:
        raise MhdError(
            f"{header.path}: SimpleITK could not read the voxels from {header.data_file.name}: "
            f"{error}. The data file may be damaged; download or extract it again."
        ) from error
    return header, image


def read_scan(path: str | Path) -> CtScan:
    """Read a CT scan: its voxels in (z, y, x) order and its world geometry.

    The header and the data file are checked before any voxel is read, so a missing or truncated
    data file raises instead of returning a partial array.

    Args:
        path: A `.mhd` (with its `.raw`/`.zraw` beside it) or `.mha` file.

    Returns:
        The scan. For LUNA16 the array is int16 Hounsfield units, shape (slices, rows, columns).

    Raises:
        MhdError: On a wrong suffix, a missing or truncated data file, a non-3-D image, or data
            SimpleITK cannot decode.
    """
    header, image = read_image(path)
    if image.GetDimension() != 3:
        raise MhdError(f"{header.path}: the image has {image.GetDimension()} dimensions, not 3.")

    array = sitk.GetArrayFromImage(image)
    logger.debug("Read %s: shape %s, dtype %s", header.path.name, array.shape, array.dtype)
    return scan_from_sitk(image, header.seriesuid, header.path, array=array)


def scan_from_sitk(
    image: sitk.Image,
    seriesuid: str,
    path: Path | None = None,
    array: NDArray | None = None,
) -> CtScan:
    """Wrap a SimpleITK image as a `CtScan`, copying its geometry."""
    return CtScan(
        array=sitk.GetArrayFromImage(image) if array is None else array,
        spacing_xyz_mm=tuple(float(v) for v in image.GetSpacing()),  # type: ignore[arg-type]
        origin_xyz_mm=tuple(float(v) for v in image.GetOrigin()),  # type: ignore[arg-type]
        direction=np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3),
        seriesuid=seriesuid,
        path=path,
    )
