"""Feast feature repository: entities, sources, feature views, on-demand views, services."""
