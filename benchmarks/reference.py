"""The reference notebooks' style, which the input and GPU benchmarks time ours against.

PIL open per image, torchvision Resize/RandomRotation(20)/RandomHorizontalFlip/ToTensor/Normalize, a
DataLoader with no workers, fp32, Adam.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.common import timer


class ReferenceImages:
    """The reference notebooks' dataset: open the file with PIL and run torchvision transforms, per image."""

    def __init__(self, paths: list[Path], labels: np.ndarray, size: int) -> None:
        from torchvision import transforms as T

        from cxr.model.preprocess import GRAY_MEAN, GRAY_STD

        self.paths, self.labels = paths, labels
        # One gray channel (not RGB) so that both sides feed the same 1-channel model.
        self.transform = T.Compose(
            [
                T.Resize((size, size)),
                T.RandomRotation(20),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize([GRAY_MEAN], [GRAY_STD]),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            x = self.transform(im.convert("L"))
        return x, int(self.labels[i])


def reference_loader(paths: list[Path], labels: np.ndarray, size: int, batch: int):
    """The reference notebooks' loader: their dataset, shuffled, no workers."""
    from torch.utils.data import DataLoader

    return DataLoader(ReferenceImages(paths, labels, size), batch_size=batch, shuffle=True, num_workers=0)


def drain_reference(loader) -> int:
    """One epoch of the reference loader; returns the images seen."""
    n = 0
    for x, _labels in loader:
        n += len(x)
    return n


def reference_steps(model, loader, lr: float) -> tuple[float, int]:
    """The reference notebooks' loop: batches from the loader, forward, backward, step. (seconds, images)."""
    import torch
    from torch import nn

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    criterion = nn.CrossEntropyLoss()
    n = 0
    with timer() as t:
        for x, y in loader:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            n += len(x)
    return t["s"], n
