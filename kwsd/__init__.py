"""kwsd: an open-vocabulary keyword-spotting daemon for home automation."""

from importlib.metadata import PackageNotFoundError, version

try:
    # One version source: pyproject.toml, as installed (wheel, sdist or editable).
    __version__ = version("kwsd")
except PackageNotFoundError:  # a bare source tree on sys.path, never installed
    __version__ = "0+unknown"
