"""Metrics and plots shared by every training job (same names across runs, for MLflow compare)."""
