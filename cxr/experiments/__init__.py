"""Experiments around training: the Optuna search (``cxr tune``) and DVC experiment sweeps logged to MLflow."""
