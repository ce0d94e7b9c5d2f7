"""A dataset decoded for one preprocessing: what every trial with that preprocessing reads."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workers.config import TrialConfig
from workers.data.decoded_cache import load_decoded
from workers.data.index import DatasetIndex
from workers.data.sources import load_index
from workers.model.preprocessing import Preprocessing, stored_size


@dataclass(frozen=True)
class PreparedData:
    """A dataset decoded once for one preprocessing, shared by every trial that uses it."""

    index: DatasetIndex
    pixels: np.ndarray  # (N, 3, S, S) uint8, memory-mapped
    preprocessing: Preprocessing

    @property
    def num_classes(self) -> int:
        return len(self.index.classes)


def prepare_data(
    config: TrialConfig, prep: Preprocessing, index: DatasetIndex | None = None
) -> PreparedData:
    index = index if index is not None else load_index(config.data)
    size = stored_size(prep.img_size, prep.crop_pct)
    pixels = load_decoded(index.images, size, prep.interpolation, fingerprint=index.fingerprint)
    return PreparedData(index, pixels, prep)
