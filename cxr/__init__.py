"""Chest X-ray classification, orchestrated: one typed function per pipeline step, laid out by job (ARCHITECTURE.md)."""
