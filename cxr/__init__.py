"""Chest X-ray classification: the pipeline steps, each one typed function."""
