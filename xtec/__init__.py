"""xtec: X-ray temperature clustering of reciprocal-space volume series."""

__version__ = "0.1.0"
