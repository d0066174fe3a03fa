"""Exceptions raised by luna_utils.

Every error names the file or value at fault and tells the caller what to do next. All of them derive from
`LunaError`, so a caller can catch the package's errors in one place.
"""


class LunaError(Exception):
    """Base class of every error raised by luna_utils."""


class MhdError(LunaError):
    """A MetaImage file (`.mhd`/`.mha` header or its data file) cannot be read as a CT scan."""


class DatasetError(LunaError):
    """A dataset folder or one of its tables is missing or invalid."""


class GeometryError(LunaError, ValueError):
    """Coordinates or a direction matrix have an invalid shape or value."""
