"""Training: the augmentation presets (CPU and device paths), batches, the loop, checkpoints and resume."""
