"""Monitoring: the drift check of the current data against the champion's, and its report."""
