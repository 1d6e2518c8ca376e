"""Evaluation: the test metrics and figures, the shortcut probes, and Grad-CAM with its localisation measures."""
