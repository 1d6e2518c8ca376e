"""Prefect tasks: thin wrappers that call the pipeline steps (through DVC for the staged ones)."""
