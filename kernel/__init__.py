"""The bottom of the house: settings, data contracts, curated-data reads, the model store and
shared names. Imports nothing of ``features``, ``models``, ``training``, ``serving`` or ``cli``."""
