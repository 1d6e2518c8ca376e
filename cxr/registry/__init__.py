"""The model registry: registration, the promotion gate (the one place that decides), aliases and audit, promotion."""
