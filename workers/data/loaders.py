"""The datasets a DataLoader reads: decoded images straight from the memory-mapped cache."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


class CachedImages(Dataset[tuple[torch.Tensor, int]]):
    """uint8 CHW tensors straight from the decoded cache, through a transform (None: the whole
    stored square, for a policy that runs on the device)."""

    def __init__(
        self,
        pixels: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray,
        transform: Callable[[torch.Tensor], torch.Tensor] | None,
    ) -> None:
        self.pixels, self.labels, self.indices, self.transform = pixels, labels, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        index = int(self.indices[item])
        image = torch.from_numpy(np.array(self.pixels[index]))
        if self.transform is None:
            return image, int(self.labels[index])
        return self.transform(image), int(self.labels[index])


class CachedSquares(CachedImages):
    """The whole stored squares, a batch per read: all a loader worker does when the policy runs
    on the device. One gather from the memory map per batch rather than a copy, a tensor and a
    stack per image, so one worker feeds thousands of images/s (`automl bench loader`)."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
        super().__init__(pixels, labels, indices, None)

    def __getitems__(self, items: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.indices[np.asarray(items, dtype=np.int64)]
        images = torch.from_numpy(np.take(self.pixels, rows, axis=0))
        return images, torch.from_numpy(self.labels[rows].astype(np.int64))


def whole_batch(batch: Any) -> Any:
    """The collate function for `CachedSquares`: its batches come stacked already."""
    return batch
