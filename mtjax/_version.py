"""The installed version of mtjax (from the package metadata)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mtjax")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"
