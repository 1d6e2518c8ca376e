"""Training: the augmentation (an Albumentations ``Compose``; its fast CPU and device paths), batches, the loop,
checkpoints and resume."""
