"""kwsd: an open-vocabulary keyword-spotting daemon for home automation."""

__version__ = "0.1.0"
