"""Estimators with scikit-learn conventions (``fit`` / ``predict``), independent of MLflow and Feast.

Training jobs (``training.jobs``) fit them on Feast training sets and log them to MLflow;
the decision service loads them back from the registry.
"""
