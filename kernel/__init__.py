"""The bottom of the house: settings, data contracts, curated-data reads, the model store and
shared names. Imports nothing of ``features``, ``models``, ``training``, ``serving`` or ``cli``."""

__version__ = "0.1.0"  # the package version (pyproject.toml reads it from here)
